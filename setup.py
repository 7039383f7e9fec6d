"""Only what pyproject.toml cannot say: ship ``llm_modules_lm_eval.pth`` at the top of site-packages
(wheel and editable installs), which registers ``lm_eval --model llm-modules`` (see
llm_modules_lm_eval.py). Everything else is in pyproject.toml."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "llm_modules_lm_eval.pth"


class BuildPyWithPth(build_py):
    """build_py, plus the .pth file: into build_lib for a wheel; straight into the editable wheel's
    folder (``install_lib``) for an editable install, whose build_lib is not shipped."""

    def run(self):
        super().run()
        if self.editable_mode:
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        os.makedirs(target, exist_ok=True)
        self.copy_file(PTH, os.path.join(target, PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})
