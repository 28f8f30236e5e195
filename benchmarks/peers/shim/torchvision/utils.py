"""Shim of ``torchvision.utils``: imported by deepinv.utils.plotting (make_grid) and deepinv.training.trainer
(save_image)."""

from ._stub import function

make_grid = function("utils.make_grid")
save_image = function("utils.save_image")
