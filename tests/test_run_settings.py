"""One settings path: every entry point takes its run settings, defaults and help from ``RunConfig``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from dagster import asset, materialize

from personc_assets.cli import build_parser
from personc_assets.cli.run_options import TAU_FIELDS, run_config_from_args
from personc_assets.core.pipeline.config import RunConfig, run_settings
from personc_assets.definitions import build_definitions
from personc_assets.defs.resources import ENV_DEFAULTS, PersonCConfig, resource_values

#: the subcommands that build a RunConfig, with the arguments they need besides run settings
RUN_COMMANDS = {"demo": ["demo"], "anonymize": ["anonymize"], "cancelable": ["cancelable", "enroll"],
                "dp": ["dp"]}
PRIVACY_COMMANDS = ("anonymize", "cancelable", "dp")


@pytest.fixture
def no_env_defaults(monkeypatch):
    for name in ENV_DEFAULTS.values():
        monkeypatch.delenv(name, raising=False)


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def test_every_entry_point_defaults_to_run_config(no_env_defaults):
    # why: a default declared a second time drifts from the first; changing one must be one line in RunConfig
    expected = RunConfig()
    parser = build_parser()
    configs = {f"personc {cmd}": run_config_from_args(parser.parse_args(argv)) for cmd, argv in RUN_COMMANDS.items()}
    configs["PersonCConfig (Dagster)"] = PersonCConfig().run_config()
    configs["build_definitions (runner)"] = build_definitions().resources["personc"].run_config()
    for s in run_settings():
        for where, cfg in configs.items():
            assert getattr(cfg, s.name) == getattr(expected, s.name) == s.default, f"{where}: default of {s.name}"


def test_flags_shared_with_audit_and_calibrate_default_to_run_config():
    # why: the encoder weights folder and the smallest face are the same settings in every subcommand
    settings = {s.name: s.default for s in run_settings()}
    audit = build_parser().parse_args(["audit", "--sources", ".", "--candidates", "."])
    calibrate = build_parser().parse_args(["calibrate", "--folder", "."])
    assert audit.weights_dir == calibrate.weights_dir == Path(settings["weights_dir"])
    assert audit.min_face_px == settings["min_face_px"]
    assert audit.tau is None  # each encoder's own tau, as in demo


def test_every_setting_has_a_flag_and_a_resource_field_with_its_help():
    # why: a setting that an entry point cannot set is a setting declared somewhere else
    demo = {a.dest: a for a in subparser("demo")._actions if a.help != argparse.SUPPRESS}  # not old spellings
    fields = PersonCConfig.model_fields
    assert list(fields) == [s.name for s in run_settings()]
    for s in run_settings():
        assert s.help in (fields[s.name].description or ""), s.name
        if s.name in TAU_FIELDS:
            assert "tau" in demo
        else:
            assert s.help in demo[s.name].help, s.name
    privacy = {a.dest for a in subparser("anonymize")._actions}
    for name in ("backbone", "backbone_options", "encoders", "witness_encoders", "encoder_options", "weights_dir",
                 "tau", "target_fmr", "sources_a", "sources_b", "out_dir"):
        assert name in privacy, f"the privacy modes choose {name} like demo"


def test_every_flag_reaches_run_config_and_survives_the_resource(tmp_path):
    # why: a value set on the command line must arrive in the run unchanged, through the Dagster resource too
    for d in ("A", "B", "w"):
        (tmp_path / d).mkdir()
    weights = tmp_path / "g.pkl"
    weights.write_bytes(b"stand-in")
    argv = ["demo", "--out", str(tmp_path / "out"), "--sources-a", str(tmp_path / "A"),
            "--sources-b", str(tmp_path / "B"), "--backbone", "stylegan2",
            "--backbone-options", '{"projection_steps": 3}', "--backbone-weights", str(weights),
            "--encoders", "dlib, arcface", "--witness-encoders", "magface",
            "--encoder-options", '{"magface": {"arch": "iresnet50"}}', "--weights-dir", str(tmp_path / "w"),
            "--tau", "0.4", "--tau", "dlib=0.9", "--target-fmr", "0.001", "--num-samples", "2",
            "--max-attempts", "3", "--seed", "7", "--min-face-px", "32", "--recipe-options", '{"mean_pull": 0.1}',
            "--novelty", '{"steps": 5}', "--no-attribution-maps", "--report-sources", "withheld"]
    cfg = run_config_from_args(build_parser().parse_args(argv))
    defaults = RunConfig()
    assert [s.name for s in run_settings() if getattr(cfg, s.name) == getattr(defaults, s.name)] == []
    assert cfg.backbone_options == {"projection_steps": 3, "weights": str(weights.resolve())}
    assert cfg.encoders == ("dlib", "arcface") and cfg.taus == {"dlib": 0.9} and cfg.bare_tau == 0.4
    assert cfg.recipe_options == {"mean_pull": 0.1}
    assert PersonCConfig.from_run_config(cfg).run_config() == cfg
    assert build_definitions(db_path=str(tmp_path / "db"), **resource_values(cfg)).resources["personc"] \
        .run_config() == cfg
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.as_dict()))) == cfg


def test_privacy_modes_choose_backbone_encoders_and_taus_like_demo(no_env_defaults):
    # why: the privacy modes build their own run; they must honour the same settings as demo
    for cmd in PRIVACY_COMMANDS:
        argv = [*RUN_COMMANDS[cmd], "--backbone", "stylegan2", "--backbone-options", '{"device": "cpu"}',
                "--encoders", "dlib", "--tau", "dlib=0.8", "--weights-dir", "w"]
        cfg = run_config_from_args(build_parser().parse_args(argv))
        assert (cfg.backbone, dict(cfg.backbone_options), cfg.encoders, dict(cfg.taus), cfg.weights_dir) == \
            ("stylegan2", {"device": "cpu"}, ("dlib",), {"dlib": 0.8}, "w"), cmd
        with pytest.raises(SystemExit):  # generation settings have no flag there
            build_parser().parse_args([*RUN_COMMANDS[cmd], "--num-samples", "3"])


@pytest.mark.parametrize("argv, problem", [
    (["--recipe-options", "[1]"], "--recipe-options must be a JSON object"),
    (["--backbone-options", "{bad"], "--backbone-options must be a JSON object"),
    (["--num-samples", "0"], "num_samples must be >= 1"),
    (["--report-sources", "all"], "report_sources must be 'thumbnails' or 'withheld'"),
    (["--tau", "dlib=high"], "bad --tau 'dlib=high'"),
    (["--sources-a", "."], "give both --sources-a and --sources-b"),
    (["--backbone-weights", "no-such.pkl"], "--backbone-weights no-such.pkl is not a file"),
])
def test_demo_usage_errors_name_the_flag(argv, problem, capsys):
    # why: a bad setting must stop before the run starts and say which flag to fix (exit 2)
    args = build_parser().parse_args(["demo", *argv])
    assert args.func(args) == 2
    assert problem in capsys.readouterr().err


def test_old_weights_flag_keeps_its_meaning_per_subcommand_and_says_the_new_one(tmp_path, capsys):
    # why: scripts using --weights must keep working, and learn the flag that means one thing everywhere
    weights = tmp_path / "g.pkl"
    weights.write_bytes(b"stand-in")
    args = build_parser().parse_args(["demo", "--weights", str(weights)])
    assert "personc demo: --weights is deprecated, use --backbone-weights" in capsys.readouterr().err
    assert run_config_from_args(args).backbone_options == {"weights": str(weights.resolve())}
    for argv in (["audit", "--sources", ".", "--candidates", "."], ["calibrate", "--folder", "."],
                 *(RUN_COMMANDS[cmd] for cmd in PRIVACY_COMMANDS)):
        args = build_parser().parse_args([*argv, "--weights", str(tmp_path)])
        assert f"personc {argv[0]}: --weights is deprecated, use --weights-dir" in capsys.readouterr().err
        assert args.weights_dir == tmp_path, argv[0]
    args = build_parser().parse_args(["dp", "--weights-dir", str(tmp_path)])
    assert run_config_from_args(args).weights_dir == str(tmp_path) and capsys.readouterr().err == ""


def test_dagster_run_config_sets_object_settings(tmp_path, no_env_defaults):
    # why: recipe and backbone options must be settable from the launchpad, as objects, not only from Python
    @asset
    def seen(personc: PersonCConfig) -> dict:
        cfg = personc.run_config()
        return {"recipe": dict(cfg.recipe_options), "backbone": dict(cfg.backbone_options),
                "encoders": cfg.encoders}

    run_config = {"resources": {"personc": {"config": {
        "recipe_options": {"mean_pull": 0.1}, "backbone_options": {"projection_steps": 3, "device": "cpu"},
        "encoders": ["dlib"]}}}}
    result = materialize([seen], resources={"personc": PersonCConfig()}, run_config=run_config)
    assert result.output_for_node("seen") == {"recipe": {"mean_pull": 0.1},
                                              "backbone": {"projection_steps": 3, "device": "cpu"},
                                              "encoders": ("dlib",)}


def test_environment_overrides_only_the_resource_defaults_it_names(monkeypatch):
    # why: `dagster dev` reads PERSONC_OUT_DIR / PERSONC_SOURCES_A/B; nothing else may differ from RunConfig
    monkeypatch.setenv("PERSONC_OUT_DIR", "/tmp/elsewhere")
    monkeypatch.setenv("PERSONC_SOURCES_A", "/a")
    monkeypatch.setenv("PERSONC_SOURCES_B", "/b")
    cfg = PersonCConfig().run_config()
    assert (cfg.out_dir, cfg.sources_a, cfg.sources_b) == ("/tmp/elsewhere", "/a", "/b")
    from dataclasses import replace
    assert cfg == replace(RunConfig(), out_dir="/tmp/elsewhere", sources_a="/a", sources_b="/b")


def test_old_audit_encoders_name_still_sets_the_witness_encoders(capsys):
    # why: "audit" meant four things; the setting is now witness_encoders, and old scripts and stored
    # configs must keep working while they learn the new name
    args = build_parser().parse_args(["demo", "--audit-encoders", "magface,arcface"])
    assert "personc demo: --audit-encoders is deprecated, use --witness-encoders" in capsys.readouterr().err
    assert run_config_from_args(args).witness_encoders == ("magface", "arcface")
    assert RunConfig.from_dict({"audit_encoders": ["magface"]}).witness_encoders == ("magface",)
    with pytest.raises(ValueError, match="unknown run setting"):
        RunConfig.from_dict({"audit_things": ["magface"]})
