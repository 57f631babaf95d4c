"""The one-shot credentials command compose runs: it keeps a token only while it stays valid."""

from __future__ import annotations

import json

from heraldo.mesh.credentials import CREDENTIALS_FILE, generate, main


def token_in(directory) -> str:
    return json.loads((directory / CREDENTIALS_FILE).read_text())["token"]


def test_keep_leaves_a_valid_token_alone(tmp_path):
    generate(tmp_path)
    before = token_in(tmp_path)

    main(["--dir", str(tmp_path), "--keep"])

    assert token_in(tmp_path) == before


def test_keep_replaces_a_token_that_expires_within_a_day(tmp_path):
    generate(tmp_path, lifetime_s=3600)
    before = token_in(tmp_path)

    main(["--dir", str(tmp_path), "--keep"])

    assert token_in(tmp_path) != before
