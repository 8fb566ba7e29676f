"""The BSRN model family. Importing this package registers every preset."""
from .attention import CCA, ESA, channel_stats
from .blocks import BSConvS, BSConvU, DSConv, make_activation, make_conv, orthogonality_loss
from .bsrn import BSRN, ESDB, BSRNConfig
from .imdn import IMDB, IMDN, IMDNConfig
from .registry import (ARCHITECTURES, arch_of, build_model, create_model, get_preset,
                       list_models, register_model)
from .rfdn import RFDB, RFDN, RFDNConfig

__all__ = [
    "BSConvS", "BSConvU", "DSConv", "make_activation", "make_conv", "orthogonality_loss",
    "ESA", "CCA", "channel_stats", "ESDB", "BSRN", "BSRNConfig", "RFDB", "RFDN", "RFDNConfig",
    "IMDB", "IMDN", "IMDNConfig", "ARCHITECTURES", "arch_of", "build_model", "create_model",
    "get_preset", "list_models", "register_model",
]
