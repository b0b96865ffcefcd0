#!/usr/bin/env bash
# tests/test_readme.py runs README.md on a copy of the repository, which has no git history: give it one commit
# per top-level entry, so that the make_diff_dataset blocks read several commits (and shard them by hash).
set -euo pipefail
git init -q .
for entry in $(git ls-files --others --exclude-standard | cut -d/ -f1 | sort -u); do
    git add -- "$entry"
    git -c user.name=readme -c user.email=readme@example.com commit -q -m "Add $entry"
done
