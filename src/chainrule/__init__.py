"""chainrule: neural networks trained by backpropagation, written out in NumPy.

The public API. A network is a `Sequential` stack of layers; `fit` trains it with a loss and an
optimizer, with callbacks observing the run; `gradcheck` verifies the backward pass against finite
differences; `sigmoid`, `softmax` and `log_softmax` are the overflow-safe functions they all share.
"""

from chainrule.callbacks import Callback, EarlyStopping, GradientFlow, ProgressLogger
from chainrule.conv import AvgPool2D, Conv2D, MaxPool2D
from chainrule.errors import DataError, ModelFileError, TrainingDiverged, UserError
from chainrule.functional import log_softmax, sigmoid, softmax
from chainrule.gradcheck import gradcheck
from chainrule.history import History
from chainrule.layers import (
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    Linear,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from chainrule.losses import BinaryCrossEntropy, CrossEntropy, Loss, MeanSquaredError
from chainrule.model_file import model_files
from chainrule.network import Sequential, load_model
from chainrule.norm import BatchNorm
from chainrule.optim import SGD, Adam, AdamW, Optimizer, cosine, step_decay
from chainrule.parameter import Parameter
from chainrule.training import evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "AvgPool2D", "BatchNorm", "BinaryCrossEntropy", "Callback", "Conv2D", "CrossEntropy", "DataError",
    "Dropout", "EarlyStopping", "Flatten", "GradientFlow", "History", "Layer", "LeakyReLU", "Linear", "Loss",
    "MaxPool2D", "MeanSquaredError", "ModelFileError", "Optimizer", "Parameter", "ProgressLogger", "ReLU", "SGD",
    "Sequential", "Sigmoid", "Softmax", "Tanh", "TrainingDiverged", "UserError", "cosine", "evaluate", "fit",
    "gradcheck", "load_model", "log_softmax", "model_files", "sigmoid", "softmax", "step_decay",
]
