"""The package's public surface is exactly what `__all__` says (STYLE.md item 12)."""

import subprocess
import sys

import recsys

EXPECTED = {"BundleError", "DataError", "Dataset", "Encoder", "Filters", "History", "ItemIndex",
            "NotFoundError", "Recommendation", "Recommender", "RecsysError", "evaluate",
            "import_dataset", "load_dataset"}


def test_all_is_exact_and_every_name_resolves():
    assert set(recsys.__all__) == EXPECTED
    for name in recsys.__all__:
        assert getattr(recsys, name) is not None


def test_unknown_names_are_attribute_errors():
    try:
        recsys.not_a_thing  # noqa: B018
    except AttributeError as exc:
        assert "not_a_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_loads_no_heavy_library():
    code = ("import sys, recsys, recsys.errors; "
            "print(sorted(m for m in ('faiss', 'lightgbm', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
