"""The package's layering holds: the Beam-free layers never import Apache
Beam, so they are tested without a pipeline and reused by the query layer,
the CLI and the services."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "topk"
BEAM_FREE = ("core", "approx", "streaming", "storage", "query", "connectors",
             "loadgen", "serve", "alerts")


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def _modules(layer):
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", BEAM_FREE)
def test_beam_free_layers_never_import_beam(layer):
    modules = _modules(layer)
    assert modules, f"topk/{layer} has no modules"
    offenders = [f"{m.relative_to(PACKAGE)} imports {name}"
                 for m in modules for name in _imports(m)
                 if name == "apache_beam" or name.startswith("apache_beam.")]
    assert not offenders, offenders


@pytest.mark.parametrize("layer", BEAM_FREE)
def test_beam_free_layers_import_no_beam_wiring(layer):
    # A Beam-free module that imported topk.transforms (or pipelines,
    # sources, sinks, cli) would pull Beam in indirectly.
    wiring = ("topk.transforms", "topk.pipelines", "topk.sources",
              "topk.sinks", "topk.cli")
    offenders = [f"{m.relative_to(PACKAGE)} imports {name}"
                 for m in _modules(layer) for name in _imports(m)
                 if name.startswith(wiring)]
    assert not offenders, offenders


def test_the_layering_test_sees_a_beam_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom apache_beam.io import fileio\n")
    assert "apache_beam.io" in list(_imports(bad))
