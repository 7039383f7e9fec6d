"""An example llm-modules plugin: one norm and one activation.

Importing the package registers both names; llm-modules imports it by itself because the
distribution declares it under the ``llm_modules.plugins`` entry-point group (pyproject.toml).
"""

from llm_modules_example.dyt import DynamicTanh
from llm_modules_example.squared_relu import SquaredReLU

__all__ = ["DynamicTanh", "SquaredReLU"]
