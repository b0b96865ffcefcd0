"""diff-generate-cascade: each stage prompted with the previous stage's text; jsonl keeps every stage; GIF; errors."""

import json

import pytest
from PIL import Image

from diff_trainer.cli import generate, generate_cascade


def stage_dirs(trained_cascade) -> list[str]:
    return [str(trained_cascade["outputs"] / f"toy-tiny-stage{stage}") for stage in (1, 2, 3)]


def test_each_stage_continues_the_previous_one(trained_cascade, tmp_path, capsys):
    stages = stage_dirs(trained_cascade)
    output = tmp_path / "cascade.jsonl"
    generate_cascade.main(
        [
            "--stages",
            *stages,
            "--samples",
            "3",
            "--gen_length",
            "12",
            "16",
            "20",
            "--steps",
            "4",
            "--temperature",
            "1.0",
            "--seed",
            "0",
            "--output",
            str(output),
            "--batch_size",
            "2",
        ]
    )
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["sample"] for record in records] == [0, 1, 2]
    assert all(len(record["stages"]) == 3 and record["text"] == record["stages"][2] for record in records)
    assert [setting["gen_length"] for setting in records[0]["settings"]] == [12, 16, 20]
    assert [setting["steps"] for setting in records[0]["settings"]] == [4, 4, 4]
    # second implementation: diff-generate on stage 2 prompted with "{stage 1} <DFF>", with the stage's seed stream
    # (stage s draws from a generator seeded seed + s) and the same first batch of two
    prompts = [f"{record['stages'][0]} <DFF>" for record in records[:2]]
    direct = tmp_path / "stage2.jsonl"
    generate.main(
        [
            "--model",
            stages[1],
            "--prompt",
            prompts[0],
            "--prompt",
            prompts[1],
            "--gen_length",
            "16",
            "--steps",
            "4",
            "--temperature",
            "1.0",
            "--seed",
            "2",
            "--output",
            str(direct),
        ]
    )
    completions = [json.loads(line)["completion"].strip() for line in direct.read_text().splitlines()]
    assert completions == [record["stages"][1] for record in records[:2]]
    out = capsys.readouterr().out
    assert out.index("== stage 1") < out.index("== stage 2") < out.index("== stage 3")
    assert f"stage 3: {records[2]['text']}" in out


def test_verbose_and_gif_show_every_stage(trained_cascade, tmp_path, capsys):
    gif = tmp_path / "cascade.gif"
    generate_cascade.main(
        [
            "--stages",
            *stage_dirs(trained_cascade),
            "--gen_length",
            "8",
            "--steps",
            "2",
            "4",
            "2",
            "--verbose",
            "--gif",
            str(gif),
        ]
    )
    out = capsys.readouterr().out
    assert "Wrote 8 frames" in out  # 2 + 4 + 2 steps, one after the other
    assert Image.open(gif).n_frames == 8
    stage_two = out[out.index("== stage 2") : out.index("== stage 3")]
    assert stage_two.count("[sequence 0]") == 4


def test_bad_arguments(trained_cascade, tmp_path, capsys):
    stages = stage_dirs(trained_cascade)
    for flags, message in (
        (["--gen_length", "8", "8"], "--gen_length takes one value or one per stage (3), got 2"),
        (["--output", str(tmp_path / "x.txt")], "written as .jsonl"),
        (["--output", str(tmp_path / "no" / "x.jsonl")], "its directory does not exist"),
        (["--append_dff"], "do not apply to a cascade"),
    ):
        with pytest.raises(SystemExit):
            generate_cascade.main(["--stages", *stages, *flags])
        assert message in capsys.readouterr().err
