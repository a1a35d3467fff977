"""The dropout family: each method as a documented ``nn.Module`` behaving as its paper defines it.

``p`` is always a *drop* probability. Modules subclass :class:`DropoutModule`, so
:func:`mc_predict` finds them for Monte Carlo dropout.

=====================================  =========================================================
method                                 module
=====================================  =========================================================
standard dropout (Hinton 2012)         :class:`Dropout`, :func:`dropout`
DropConnect (Wan 2013)                 :class:`DropConnectLinear`
standout (Ba & Frey 2013)              :class:`StandoutLinear`
Gaussian / fast dropout                :class:`GaussianDropout`, :func:`gaussian_dropout`,
(Srivastava 2014; Wang & Manning 2013) :class:`FastDropoutLinear`
variational dropout (Kingma 2015)      :class:`VariationalDropoutLinear`, :func:`variational_dropout_kl`
concrete dropout (Gal 2017)            :class:`ConcreteDropout`
max-pooling dropout (Wu & Gu 2015)     :class:`MaxPoolingDropout2d`
spatial dropout (Tompson 2015)         :class:`SpatialDropout`
cutout (DeVries & Taylor 2017)         :class:`Cutout`
max-drop (Park & Kwak 2016)            :class:`MaxDrop`
RNNDrop (Moon 2015)                    :class:`RNNDropLSTMCell`, :class:`RNNDropLSTM`
recurrent dropout (Semeniuta 2016)     :class:`RecurrentDropoutLSTMCell`, :class:`RecurrentDropoutLSTM`
variational RNN dropout (Gal 2016)     :class:`VariationalLSTMCell`, :class:`VariationalLSTM`
MC dropout (Gal & Ghahramani 2016)     :func:`mc_predict`, :func:`mc_dropout_mode`
=====================================  =========================================================
"""

from ._common import DropoutModule
from .concrete import ConcreteDropout
from .gaussian import (
    FastDropoutLinear,
    GaussianDropout,
    VariationalDropoutLinear,
    gaussian_dropout,
    variational_dropout_kl,
)
from .mc import DROPOUT_TYPES, MCPrediction, is_dropout_like, mc_dropout_mode, mc_predict
from .recurrent import (
    RecurrentDropoutLSTM,
    RecurrentDropoutLSTMCell,
    RNNDropLSTM,
    RNNDropLSTMCell,
    VariationalLSTM,
    VariationalLSTMCell,
)
from .standard import DropConnectLinear, Dropout, StandoutLinear, dropout
from .structured import Cutout, MaxDrop, MaxPoolingDropout2d, SpatialDropout

__all__ = [
    "DROPOUT_TYPES",
    "ConcreteDropout",
    "Cutout",
    "DropConnectLinear",
    "Dropout",
    "DropoutModule",
    "FastDropoutLinear",
    "GaussianDropout",
    "MCPrediction",
    "MaxDrop",
    "MaxPoolingDropout2d",
    "RNNDropLSTM",
    "RNNDropLSTMCell",
    "RecurrentDropoutLSTM",
    "RecurrentDropoutLSTMCell",
    "SpatialDropout",
    "StandoutLinear",
    "VariationalDropoutLinear",
    "VariationalLSTM",
    "VariationalLSTMCell",
    "dropout",
    "gaussian_dropout",
    "is_dropout_like",
    "mc_dropout_mode",
    "mc_predict",
    "variational_dropout_kl",
]
