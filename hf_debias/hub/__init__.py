"""The Hugging Face Hub: save, push and load corrected models and CAVs, with model cards.

Imports point one way: ``hub`` builds on the model wrapper and ``CAV``; their ``save_pretrained`` /
``push_to_hub`` methods call in here.
"""

from .cards import ModelCardInfo
from .cavs import push_cavs_to_hub, save_cavs
from .pretrained import load_model, push_model, save_model
from .push import PushError, push_folder

__all__ = ["ModelCardInfo", "PushError", "load_model", "push_cavs_to_hub", "push_folder", "push_model",
           "save_cavs", "save_model"]
