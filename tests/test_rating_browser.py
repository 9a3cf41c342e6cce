"""The rating page in a real browser: headless system Chromium driven by Playwright (no browser download).

Two raters at once, by keyboard and by mouse, a reload mid-item, an undo; then ``agreement`` on what the page
stored gives the figures that follow from the answers the test chose (worked out below).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from browser_support import chromium_path
from harness.agreement import agreement_table
from harness.rating.cli import open_study
from harness.rating.server import create_app, running
from harness.rating.study import StudySpec
from harness.tables import tidy_table
from results_fixture import results_dir  # noqa: F401

pytestmark = pytest.mark.slow
EVIL_NAME = '<img src=x onerror="window.pwned=1"><b>bold</b> lora'
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]


@pytest.fixture()
def folder(results_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "toy"
    shutil.copytree(results_dir, copy)
    for metadata in (copy / "images").glob("*/*/metadata.json"):  # LoRA names with markup: shown as text only
        data = json.loads(metadata.read_text())
        data["set"]["loras"][0]["name"] = EVIL_NAME
        metadata.write_text(json.dumps(data))
    return copy


class Rater:
    """One browser page of one rater; answers follow fixed rules by the method shown on each side."""

    def __init__(self, page, study, name: str) -> None:
        self.page, self.study, self.name = page, study, name

    def progress(self) -> int:
        return int(self.page.eval_on_selector("#progress", "p => p.value"))

    def methods(self) -> tuple[str, str]:
        keys = [self.page.get_attribute(f"#image-{side}", "src").rsplit("/", 1)[1] for side in ("left", "right")]
        return tuple(self.study.images[key].method_label for key in keys)

    def current(self) -> str:
        return self.page.get_attribute(".question.current", "data-criterion")

    def give(self, answer: str, mouse: bool) -> None:
        before = self.progress()
        if mouse:
            self.page.click(f".question.current button[data-answer='{answer}']")
        else:
            self.page.keyboard.press({"left": "a", "right": "b", "tie": "t", "skip": "s"}[answer])
        self.wait_for_progress(before + 1)

    def wait_for_progress(self, value: int) -> None:
        # a selector, not wait_for_function: the page's Content-Security-Policy forbids eval, rightly
        self.page.wait_for_selector(f"#progress[value='{value}']", state="attached")

    def choice(self, first_main_set: tuple[str, int]) -> str:
        """composition: the switch image (bob: tie on the study's first main item); identity: tie; quality: the
        left image (ann) or the right one (bob)."""
        left, right = self.methods()
        criterion = self.current()
        if criterion == "composition":
            shown = self.study.images[self.page.get_attribute("#image-left", "src").rsplit("/", 1)[1]]
            if self.name == "bob" and (shown.set_id, shown.seed) == first_main_set:
                return "tie"
            return "left" if left == "switch" else "right"
        if criterion == "identity":
            return "tie"
        return "left" if self.name == "ann" else "right"

    def login(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("#rater-input")
        self.page.fill("#rater-input", self.name)
        self.page.keyboard.press("Enter")
        self.page.wait_for_selector(".question.current")


def test_two_raters_keyboard_mouse_reload_undo_then_agreement(folder: Path) -> None:
    chromium = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api")
    spec = StudySpec.from_dict({"name": "browser", "pairs": ["merge:switch"], "n": [2], "items_per_rater": 3,
                                "repeats": 1, "gold": 1})
    study, db = open_study(folder, spec)
    first = (study.main[0].set_id, study.main[0].seed)
    # bob's tie must fall on a set no other main item shares, for the hand arithmetic below
    assert len({(item.set_id, item.seed) for item in study.main}) == 3
    assert (study.gold[0].set_id, study.gold[0].seed) != first  # bob's tie stays off the gold item
    total = study.list_length * 3
    with running(create_app(study, db, folder)) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        try:
            ann = Rater(browser.new_context().new_page(), study, "ann")
            bob = Rater(browser.new_context().new_page(), study, "bob")  # own storage: another rater
            ann.login(url)
            bob.login(url)
            text = ann.page.inner_text("#elements")
            assert "<b>bold</b> lora" in text  # markup in a LoRA name is shown as text
            assert ann.page.evaluate("window.pwned") is None and ann.page.locator("#elements img").count() == 0
            # ann by keyboard, bob by mouse, turn about, one answer each
            for step in range(4):
                ann.give(ann.choice(first), mouse=False)
                bob.give(bob.choice(first), mouse=True)
            # ann: reload mid-item (one criterion answered): nothing lost, no second login
            assert ann.current() == "identity"
            ann.page.reload()
            ann.page.wait_for_selector(".question.current")
            assert ann.page.is_hidden("#login") and ann.progress() == 4 and ann.current() == "identity"
            assert ann.page.get_attribute(".question[data-criterion='composition'] button.chosen",
                                          "data-answer") in ("left", "right")
            # ann: a wrong answer, undone with the keyboard, then the right one
            wrong = "left" if ann.choice(first) == "right" else "right"
            ann.give(wrong, mouse=False)
            ann.page.keyboard.press("u")
            ann.wait_for_progress(4)
            assert ann.current() == "identity"
            while ann.progress() < total or bob.progress() < total:
                for rater in (ann, bob):
                    if rater.progress() < total:
                        rater.give(rater.choice(first), mouse=rater is bob and rater.progress() % 2 == 0)
            for rater in (ann, bob):
                rater.page.wait_for_selector("#finished", state="visible")
                assert "every item is rated" in rater.page.inner_text("#finished")
        finally:
            browser.close()

    answers = db.answers()
    assert answers.groupby("rater").size().to_dict() == {"ann": total, "bob": total}
    assert answers["seconds"].notna().all() and (answers["seconds"] >= 0).all()
    table = agreement_table(answers, tidy_table(folder))

    def value(figure: str, subject: str, criterion: str = "composition") -> float:
        row = table[(table["figure"] == figure) & (table["subject"] == subject) & (table["criterion"] == criterion)]
        return float(row["value"].item())

    # composition on the 3 main items: both raters chose switch, except bob's tie on the first item.
    # Preference for merge per item: (0 + 0.5) / 2 = 0.25, then 0 and 0; one item per set -> mean 0.25 / 3
    assert value("win_rate", "merge vs switch") == pytest.approx(0.25 / 3)
    # units (A=merge=0, tie=1, B=switch=2): (2,1), (2,2), (2,2): o21 = o12 = 1, o22 = 4; n2 = 5, n1 = 1, n = 6
    # alpha = 1 - 5 * 2 / (2 * 5 * 1) = 0
    assert value("krippendorff_alpha", "all raters") == pytest.approx(0.0)
    # identity: every answer a tie -> alpha undefined, and it says so
    identity = table[(table["figure"] == "krippendorff_alpha") & (table["criterion"] == "identity")].iloc[0]
    assert pd.isna(identity["value"]) and "same value" in identity["missing_reason"]
    # on a repeat (sides swapped) the method rules answer as before (composition, identity), the side rule for
    # quality does not: 2 of 3 per rater (ann's undone answer left no trace)
    assert value("rater_consistency", "ann", "all") == pytest.approx(2 / 3)
    assert value("rater_consistency", "bob", "all") == pytest.approx(2 / 3)
    # gold: both raters chose switch; right exactly when switch is the image with every element
    gold = study.gold[0]
    switch_is_good = study.images[gold.expected].method_label == "switch"
    assert value("gold_accuracy", "all raters") == (1.0 if switch_is_good else 0.0)
    # clip_t is higher for switch on every image of the fixture, as the raters' majority says
    assert value("pairwise_accuracy", "clip_t") == 1.0
