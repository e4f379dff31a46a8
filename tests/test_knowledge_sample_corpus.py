"""A small maintenance corpus written into tmp folders, shared by the knowledge and RAG tests.

The real knowledge base (knowledge/docs) is edited independently; tests use this
fixed corpus so their expectations do not move with it.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DOCS = {
    "valve-lag.md": """---
id: valve-lag
title: Valve lag
components: [valve]
tags: [failure-mode, valve-lag]
---

A directional valve that shifts late delays the pressure build-up after each switching command.

## Symptoms

The pressure at the working port rises later and with a flatter slope after the switching command.
The motor power peak around each switching edge is shifted and broadened.

## Causes

Fine contamination silts the spool clearance and raises friction.
Low solenoid supply voltage or an overheated coil weakens the switching force.

## Repair

Measure the coil voltage at the connector while switching; it must be within ten percent of nominal.
Clean or replace the spool, then flush the circuit and improve filtration.
""",
    "pump-leakage.md": """---
id: pump-leakage
title: Internal pump leakage
components: [pump]
tags: [failure-mode, internal-pump-leakage]
---

## Symptoms

Flow at the pump outlet drops while the motor keeps running at full speed.
The case drain flow of a piston pump rises as the internal clearances wear.

## Repair

Measure the case drain flow with a flow meter and compare it with the data sheet limit.
Replace the worn pump cartridge when the drain flow exceeds the limit.
""",
    "cooler.md": """---
id: cooler-fouling
title: Cooler fouling
components: [cooler]
tags: [failure-mode, cooler-degradation]
---

## Symptoms

The oil temperature climbs steadily during the shift because the cooler removes less heat.
Cooling efficiency falls when fins are blocked with dust or the water side is scaled.

## Repair

Clean the air-side fins with low pressure compressed air from the clean side.
Descale the water side of the heat exchanger with an approved cleaning agent.
""",
    "accumulator.txt": """Accumulator precharge check
Discharge the hydraulic side of the accumulator completely before measuring the nitrogen precharge.
Use a charging and gauging kit and fill only dry nitrogen, never oxygen or air.
""",
}


def write_sample_corpus(folder: Path, docs: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (docs or SAMPLE_DOCS).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_sample_corpus_parses(tmp_path):
    from knowledge.corpus import load_documents

    docs = load_documents([write_sample_corpus(tmp_path)])
    assert sorted(d.id for d in docs) == ["accumulator", "cooler-fouling", "pump-leakage", "valve-lag"]
