"""The README's model example runs as written."""
import pathlib
import re


def test_readme_model_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["users"].shape == (2, 6, 64) and namespace["top10"].shape == (2, 10)
