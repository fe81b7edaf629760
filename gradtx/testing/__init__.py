"""A conformance kit for gradient transformations: ``check_transformation(tx, params)``.

Runs a transformation (gradtx's or your own, anything with optax's ``init``/``update``) through
jit, state stability, dtypes, strict promotion, abstract init, sharding, odd tree structures,
extra arguments and vmap. Each contract is in one of two tiers (:data:`TIERS`): a broken
**required** one raises :class:`CheckFailure` with a precise message; a missed **advisory** one
(gradtx's own standards, which a third party need not meet) is listed in the report's
``misses``, and raises too with ``strict=True``. See ``docs/testing.md``. Importing it needs
neither pytest nor hypothesis.
"""

from ._checks_dtype import DEFAULT_DTYPES as DEFAULT_DTYPES
from ._checks_dtype import check_abstract_init as check_abstract_init
from ._checks_dtype import check_dtypes as check_dtypes
from ._checks_dtype import check_strict_promotion as check_strict_promotion
from ._checks_jit import check_jit as check_jit
from ._checks_jit import check_stability as check_stability
from ._checks_sharding import check_sharding as check_sharding
from ._checks_sharding import partition_specs as partition_specs
from ._checks_structure import KitPair as KitPair
from ._checks_structure import check_extra_args as check_extra_args
from ._checks_structure import check_structure as check_structure
from ._checks_structure import structure_zoo as structure_zoo
from ._checks_vmap import check_vmap as check_vmap
from ._common import make_grads as make_grads
from ._kit import CHECKS as CHECKS
from ._kit import check_transformation as check_transformation
from ._kit import default_params as default_params
from ._report import ADVISORY as ADVISORY
from ._report import REQUIRED as REQUIRED
from ._report import TIERS as TIERS
from ._report import CheckFailure as CheckFailure
from ._report import CheckReport as CheckReport
from ._report import tier_of as tier_of

__all__ = [
    "ADVISORY",
    "CHECKS",
    "DEFAULT_DTYPES",
    "CheckFailure",
    "CheckReport",
    "KitPair",
    "REQUIRED",
    "TIERS",
    "check_abstract_init",
    "check_dtypes",
    "check_extra_args",
    "check_jit",
    "check_sharding",
    "check_stability",
    "check_strict_promotion",
    "check_structure",
    "check_transformation",
    "check_vmap",
    "default_params",
    "make_grads",
    "partition_specs",
    "structure_zoo",
    "tier_of",
]
