"""The documentation against the code: every config key documented once, with its default, and
every file the docs link to present."""

import ast
import re

from conftest import PROJECT_ROOT
from seqjax import config as config_lib

# A row of docs/config.md's tables: | `key` | `default` | meaning |
ROW = re.compile(r"^\| `(\w+)` \| `([^`]*)` \|", re.M)
# A relative Markdown link: [text](path) or [text](path#anchor).
LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)(?:#[^)]*)?\)")


def test_config_reference_documents_every_key_once_with_its_default():
  rows = ROW.findall((PROJECT_ROOT / "docs" / "config.md").read_text(encoding="utf-8"))
  keys = [key for key, _ in rows]
  defaults = config_lib.base_config().to_dict()
  assert sorted(set(keys)) == sorted(keys), "a key is documented twice"
  assert sorted(keys) == sorted(defaults), "documented keys differ from base_config()'s"
  for key, default in rows:
    assert ast.literal_eval(default) == defaults[key], key


def test_files_the_docs_link_to_exist():
  pages = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md")),
           *sorted((PROJECT_ROOT / "experiments" / "results").glob("*.md"))]
  for page in pages:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
      assert (page.parent / target).exists(), f"{page.name} links to {target}, which is absent"
