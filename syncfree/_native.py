"""Loads the native extension, and explains a build made for another torch."""
import glob
import os
import sysconfig

import torch

_REBUILD = ("rebuild syncfree against the torch you have: "
            "pip install --no-build-isolation --force-reinstall --no-deps .  (from the syncfree source tree)")


def _load():
    here = os.path.dirname(os.path.abspath(__file__))
    if not glob.glob(os.path.join(here, "_C*" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))):
        raise ImportError(f"syncfree's native extension is not built in {here} (the source tree?): install it with "
                          f"`pip install .` and import syncfree from another directory, or build it in place with "
                          f"`python setup.py build_ext --inplace`")
    try:
        from . import _C
    except ImportError as e:
        raise ImportError(f"syncfree's native extension failed to load ({e}); {_REBUILD}") from e
    if _C.torch_version != torch.__version__:
        raise ImportError(f"syncfree was built for torch {_C.torch_version} but torch "
                          f"{torch.__version__} is installed; {_REBUILD}")
    return _C


_C = _load()
