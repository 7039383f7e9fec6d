"""An example llm-modules plugin: one norm, one activation and one position encoding.

Importing the package registers the three names; llm-modules imports it by itself because the
distribution declares it under the ``llm_modules.plugins`` entry-point group (pyproject.toml).
"""

from llm_modules_example.dyt import DynamicTanh
from llm_modules_example.position_gate import PositionGate
from llm_modules_example.squared_relu import SquaredReLU

__all__ = ["DynamicTanh", "PositionGate", "SquaredReLU"]
