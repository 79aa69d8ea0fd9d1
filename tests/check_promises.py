#!/usr/bin/python3
"""Checks docs/PROMISES.md, the table of what README.md, docs/PROTOCOL.md
and docs/client.md promise and which tests pin each promise (issue 14).

Fails (exit 1, one line per problem) when the table is missing or has no
rows, when a row names a test that does not exist in the tree, or when a
row is marked UNTESTED without a reason. Prints a one-line summary.

A row is a Markdown table line whose first cell is an id like P-...:

  | id | source | promise | tests |

The tests cell lists references, each in backquotes, separated by
"<br>", ";" or ",":
  tests/integration/test_x.py::test_name     a pytest function (also a
                                             parametrized one)
  tests/unit/test_x.c::test_name             a cmocka test function
  js/test/x.test.js::"it title"              a node:test title, exact;
  js/e2e/x.test.js::"it title"               titles written as "a" + "b"
                                             count as "ab"
or UNTESTED: <reason>."""

import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join("docs", "PROMISES.md")

JS_LIT = r'(?:"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|`[^`]*`)'
JS_TITLE = re.compile(r'\b(?:it|test)\(\s*(' + JS_LIT +
                      r'(?:\s*\+\s*' + JS_LIT + r')*)')
ID = re.compile(r"^P-[A-Za-z0-9§.\-]+$")
REF = re.compile(r'^(?P<path>[\w./-]+)::(?P<name>.+)$')


def js_titles(src):
    """Every it()/test() title of a node:test file, literals joined."""
    titles = set()
    for m in JS_TITLE.finditer(src):
        parts = re.findall(JS_LIT, m.group(1))
        titles.add("".join(p[1:-1].replace('\\"', '"').replace("\\'", "'")
                           for p in parts))
    return titles


class Tree:
    """The test files of the tree, each read and indexed once."""

    def __init__(self, root):
        self.root = root
        self.cache = {}

    def names(self, path):
        if path not in self.cache:
            full = os.path.join(self.root, path)
            try:
                with open(full, encoding="utf-8") as f:
                    src = f.read()
            except OSError:
                self.cache[path] = None
                return None
            if path.endswith(".py"):
                found = set(re.findall(
                    r"^\s*(?:async\s+)?def\s+(test_\w+)\s*\(", src, re.M))
            elif path.endswith(".c"):
                found = set(re.findall(
                    r"^(?:static\s+void\s+)?(test_\w+)\s*\(\s*void\s*\*\*",
                    src, re.M))
            elif path.endswith(".js"):
                found = js_titles(src)
            else:
                found = set()
            self.cache[path] = found
        return self.cache[path]


def split_row(line):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return cells


def check(root):
    problems = []
    path = os.path.join(root, TABLE)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        return ["%s: missing (%s)" % (TABLE, e.strerror)], (0, 0, 0)
    tree = Tree(root)
    rows = untested = 0
    named = set()
    seen = {}
    for n, line in enumerate(lines, 1):
        if not line.startswith("|"):
            continue
        # The id is the first cell, the tests the last: a promise may
        # hold a "|" (in code), a test reference never does.
        cells = line.strip().strip("|").split("|")
        if not ID.match(cells[0].strip()):
            continue
        where = "%s:%d" % (TABLE, n)
        rid = cells[0].strip()
        rows += 1
        if rid in seen:
            problems.append("%s: %s already used at line %d"
                            % (where, rid, seen[rid]))
        seen[rid] = n
        if len(cells) < 4:
            problems.append("%s: %s has %d cells, not 4 (id, source, "
                            "promise, tests)" % (where, rid, len(cells)))
            continue
        cell = cells[-1].strip()
        if cell.startswith("UNTESTED"):
            untested += 1
            reason = cell[len("UNTESTED"):].lstrip(" :-").strip()
            if len(reason) < 10:
                problems.append("%s: %s is UNTESTED without a reason"
                                % (where, rid))
            continue
        refs = re.findall(r"`([^`]+)`", cell)
        rest = re.sub(r"`[^`]+`", "", cell)
        if re.sub(r"<br>|[;,\s]", "", rest):
            problems.append("%s: %s: text outside `path::test` references "
                            "in the tests cell: %r" % (where, rid, rest))
        if not refs:
            problems.append("%s: %s names no test (write UNTESTED: reason "
                            "if none covers it)" % (where, rid))
        for ref in refs:
            m = REF.match(ref.strip())
            if not m:
                problems.append("%s: %s: %r is not path::test"
                                % (where, rid, ref))
                continue
            named.add(ref.strip())
            tpath, name = m.group("path"), m.group("name").strip()
            if tpath.endswith(".js"):
                if not (len(name) >= 2 and name[0] == name[-1] == '"'):
                    problems.append('%s: %s: %s: a node test is named by '
                                    'its title in double quotes'
                                    % (where, rid, ref))
                    continue
                name = name[1:-1]
            known = tree.names(tpath)
            if known is None:
                problems.append("%s: %s: no file %s" % (where, rid, tpath))
            elif name not in known:
                problems.append("%s: %s: no test %s in %s"
                                % (where, rid, name, tpath))
    if rows == 0:
        problems.append("%s: no rows (| P-... | source | promise | tests |)"
                        % TABLE)
    return problems, (rows, len(named), untested)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else REPO
    problems, (rows, tests, untested) = check(root)
    problems = list(dict.fromkeys(problems))    # a row naming a file twice
    for p in problems:
        print(p)
    print("check_promises: %d promises, %d tests, %d untested%s"
          % (rows, tests, untested,
             "" if not problems else ", %d problems" % len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
