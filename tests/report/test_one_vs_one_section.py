"""The one-vs-one section shows the study's claims and generator tables when the run has them."""

from __future__ import annotations

import pandas as pd
from report_helpers import make_report_data

from concilium.report.sections import BAR_SECTIONS, section_one_vs_one

SPEC = next(s for s in BAR_SECTIONS if s.section == "one-vs-one")


def test_claims_and_generator_tables_follow_the_bars():
    data = make_report_data()
    alone = section_one_vs_one(data, SPEC)
    assert len(alone.tables) == 1 and alone.figures
    data.tables["one_vs_one_claims"] = pd.DataFrame(
        {"method": ["integrated_gradients"], "metric": ["relevance_mass"],
         "claim": ["localises better"], "verdict": ["not shown"]})
    data.tables["one_vs_one_generator"] = pd.DataFrame({"success": [0.98], "l1": [0.03]})
    s = section_one_vs_one(data, SPEC)
    assert len(s.tables) == 3
    assert any("claims" in p for p in s.paragraphs) and any("|G - x*|" in p for p in s.paragraphs)
    assert "[ganmex]" in SPEC.command
