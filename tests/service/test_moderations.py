"""/v1/moderations: categories and flags for every key, spans and scores only for keys allowed to see them,
bounded input."""

from __future__ import annotations

from pathlib import Path

import pytest

TEXT = "Everyone knows Peter Parker from Queens."


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text("""tenants:
  analyst: {see_detections: true}
  app: {}
keys:
  - {key: sk-analyst-1, tenant: analyst}
  - {key: sk-app-0001, tenant: app}
""")
    return path


def test_spans_and_scores_only_for_tenants_allowed_to_see_them(gateway_for, keys_file: Path) -> None:
    with gateway_for(keys_file=keys_file) as (client, _):
        app = client.post("/v1/moderations", json={"input": TEXT}, headers={"authorization": "Bearer sk-app-0001"})
        analyst = client.post("/v1/moderations", json={"input": TEXT},
                              headers={"authorization": "Bearer sk-analyst-1"})  # fmt: skip
    plain, detailed = app.json(), analyst.json()
    assert plain["results"][0]["flagged"] and plain["results"][0]["categories"]["spider-man"]
    assert "quell" not in plain["results"][0] and all("@" not in p for p in plain["policies"])
    span = detailed["results"][0]["quell"]["detections"][0]["span"]
    assert TEXT[span[0] : span[1]] == "Peter Parker"


def test_too_much_text_in_all_is_413(gateway_for) -> None:
    with gateway_for(moderation_max_chars=1000) as (client, _):
        resp = client.post("/v1/moderations", json={"input": ["x" * 600, "y" * 600]})
    assert resp.status_code == 413 and resp.json()["error"]["param"] == "input"


NEAR = """\
id: forget-herzog
targets:
  - id: herzog
    terms: [Werner Herzog]
    near_names: true
"""


def test_a_near_spelling_of_a_name_is_reported_as_near(gateway_for, policy_dir: Path) -> None:
    (policy_dir / "forget-herzog.yaml").write_text(NEAR)
    text = "Werner Herzöog's first film, then Werner Herzog's second."
    with gateway_for() as (client, _):
        resp = client.post("/v1/moderations", json={"input": text}, headers={"x-quell-policies": "forget-herzog"})
    (result,) = resp.json()["results"]
    found = {(d.get("match", "term"), text[d["span"][0] : d["span"][1]]) for d in result["quell"]["detections"]}
    assert found == {("near", "Werner Herzöog"), ("term", "Werner Herzog")} and result["categories"]["herzog"]
