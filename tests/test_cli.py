"""`petite-data` commands as a user runs them."""

from __future__ import annotations

from pathlib import Path

from petite_fl.cli.data import main


def _text(capsys) -> str:
    out = capsys.readouterr()
    return " ".join((out.out + out.err).split())


def test_synth_generates_prints_a_summary_and_then_does_nothing(tmp_path: Path, capsys):
    args = ["synth", "data=tiny", "data.synth.scanners=[scanner5]", "--subjects", "2",
            "--out", str(tmp_path), "--workers", "1"]
    assert main(args) == 0
    text = _text(capsys)
    assert "generated 2 subject scans" in text and "scanner5" in text and "128×128×63" in text
    assert (tmp_path / "synthetic-tiny" / "scanner5" / "manifest.json").is_file()
    assert main(args) == 0
    assert "nothing to do" in _text(capsys)


def test_synth_rejects_a_bad_override_with_one_line(capsys):
    assert main(["synth", "data.synth.subjects=-1"]) == 2
    text = _text(capsys)
    assert "error" in text and "subjects" in text and "Traceback" not in text


def test_synth_rejects_an_unknown_scanner(tmp_path: Path, capsys):
    assert main(["synth", "data.synth.scanners=[scanner9]", "--subjects", "1", "--out", str(tmp_path)]) == 2
    assert "unknown scanner 'scanner9'" in _text(capsys)


def test_check_accepts_a_valid_site(small_site: Path, capsys):
    assert main(["check", str(small_site)]) == 0
    text = _text(capsys)
    assert "OK: 3 subjects valid" in text and "train 1, val 1, test 1" in text


def test_scanners_lists_every_registered_scanner_with_rationales(capsys):
    assert main(["scanners"]) == 0
    text = _text(capsys)
    for i in range(1, 6):
        assert f"scanner{i}.fwhm_mm" in text


def test_peft_list_shows_the_21_combinations_at_paper_size(capsys):
    from petite_fl.cli.main import main as petite

    assert petite(["peft", "list"]) == 0
    text = _text(capsys)
    assert "21 feasible Mix-PEFT combinations in all" in text
    assert "12 Mix-PEFT combinations" in text and "9 Mix-PEFT combinations" in text
    assert "lora+ssf+bitfit ← PETITE" in text and "vpt+lora+bitfit ← PETITE" in text
    assert "101,670,049" in text  # UNETR at paper size


def test_an_error_line_keeps_its_brackets(capsys):
    """rich would read `[sub-01]` or `[a,b]` as markup tags and drop them from the one line the user gets."""
    from petite_fl.console import run_cli
    from petite_fl.errors import DataError

    def body():
        raise DataError("/data/[sub-01]/scan.nii: not a NIfTI file; data.synth.scanners=[scanner4,scanner5]")

    assert run_cli("petite", body) == 2
    assert "/data/[sub-01]/scan.nii: not a NIfTI file; data.synth.scanners=[scanner4,scanner5]" in _text(capsys)
