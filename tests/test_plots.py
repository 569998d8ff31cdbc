"""The run's plots say what happened: one epoch shows its validation point and one tick, a
run without validation is titled without it, and one without a finite value says so."""

from __future__ import annotations

import math

from modelspec.commands._plots import curves_figure, curves_png


def axis(history, key="loss", label="Loss"):
    (ax,) = curves_figure(history, key, label).axes
    return ax


def test_one_epoch_shows_its_validation_point_on_one_whole_tick():
    ax = axis({"loss": [0.5], "val_loss": [0.6]})
    train, val = ax.get_lines()
    assert list(val.get_xdata()) == [1] and val.get_marker() not in ("None", None, "")
    assert list(ax.get_xticks()) == [1]
    assert ax.get_title() == "Training and validation loss"


def test_without_validation_the_title_says_training_only():
    ax = axis({"accuracy": [0.5, 0.6, 0.7]}, "accuracy", "Accuracy")
    assert ax.get_title() == "Training accuracy" and len(ax.get_lines()) == 1
    assert list(ax.get_xticks()) == [1, 2, 3]


def test_non_finite_epochs_are_left_out_and_none_left_is_said():
    ax = axis({"loss": [0.5, math.inf], "val_loss": [0.6, math.nan]})
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1], [1]]
    empty = axis({"loss": [math.inf]})
    assert not empty.get_lines() and empty.texts[0].get_text() == "no epoch with a finite loss to plot"
    assert axis({}).texts  # --epochs 0
    assert curves_png({}, "loss", "Loss").startswith(b"\x89PNG")
