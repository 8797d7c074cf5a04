"""The build of ccserver's compiled modules; everything else is in pyproject.toml.

The modules of ccserver/compiled.py are compiled with mypyc when it and a C compiler are there.
Each extension is optional: where one cannot be built, the build goes on without it and ccserver
runs those modules from their sources (ccserver/compiled.py decides at import).
"""

import glob
import json
import os
import runpy
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

compiled = runpy.run_path(os.path.join("ccserver", "compiled.py"))
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


class BuildAndRecord(build_ext):
    """build_ext, then the record of what it compiled, written only if it built every module."""

    def run(self) -> None:
        digests = compiled["source_digests"]()
        outputs = [self.get_ext_fullpath(extension.name) for extension in self.extensions]
        package = "ccserver" if self.inplace else os.path.join(self.build_lib, "ccserver")
        record = os.path.join(package, os.path.basename(compiled["RECORD"]))
        # What an earlier build left would pass for this one's if this one failed; and the
        # extension of a module no longer compiled would be imported instead of its source.
        stale = [record, *outputs]
        if self.inplace:
            stale += glob.glob(os.path.join("ccserver", "**", "*" + SUFFIX), recursive=True)
        for path in stale:
            if os.path.exists(path):
                os.remove(path)
        super().run()
        if self.extensions and all(os.path.exists(path) for path in outputs):
            os.makedirs(package, exist_ok=True)
            with open(record, "w") as file:
                json.dump(digests, file, indent=1)


extensions = []
if not compiled["pure_python_asked"]():
    try:
        from mypyc.build import mypycify
    except ImportError:
        pass
    else:
        paths = [os.path.relpath(compiled["source_of"](module)) for module in compiled["MODULES"]]
        extensions = mypycify(paths, opt_level="3", group_name=compiled["GROUP"])
        for extension in extensions:
            extension.optional = True

setup(ext_modules=extensions, cmdclass={"build_ext": BuildAndRecord})
