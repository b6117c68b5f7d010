"""The scGPT network in pure PyTorch (no anndata, no Lightning).

:class:`ScGPTConfig` describes an architecture; :class:`ScGPTNet` builds it. Sub-modules carry the
official parameter names, so an official ``best_model.pt`` maps onto it key for key
(see :mod:`scgpt.io`).
"""

from ._attention import SelfAttention, generative_attn_mask, padding_to_attn_mask
from ._config import ScGPTConfig
from ._decoders import (
    AdversarialDiscriminator,
    AffineExprDecoder,
    ClsDecoder,
    ExprDecoder,
    MVCDecoder,
    grad_reverse,
)
from ._encoders import (
    BatchLabelEncoder,
    CategoryValueEncoder,
    ContinuousValueEncoder,
    GeneEncoder,
    ScalingValueEncoder,
)
from ._model import Encoded, ScGPTNet
from ._norm import DomainSpecificBatchNorm1d
from ._transformer import TransformerEncoder, TransformerLayer

__all__ = [
    "AdversarialDiscriminator",
    "AffineExprDecoder",
    "BatchLabelEncoder",
    "CategoryValueEncoder",
    "ClsDecoder",
    "ContinuousValueEncoder",
    "DomainSpecificBatchNorm1d",
    "Encoded",
    "ExprDecoder",
    "GeneEncoder",
    "MVCDecoder",
    "ScGPTConfig",
    "ScGPTNet",
    "ScalingValueEncoder",
    "SelfAttention",
    "TransformerEncoder",
    "TransformerLayer",
    "generative_attn_mask",
    "grad_reverse",
    "padding_to_attn_mask",
]
