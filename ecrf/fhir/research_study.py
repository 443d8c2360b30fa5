"""ResearchStudy/<study id>: read-only, generated from the loaded study definition."""

from typing import Any


def research_study(study: Any) -> dict[str, Any]:
    return {
        "resourceType": "ResearchStudy",
        "id": study.id,
        "meta": {"versionId": "1"},
        "identifier": [{"system": study.identifier_system, "value": study.id}],
        "title": study.title,
        "status": "active",
        "enrollment": [{"display": f"planned size {study.planned_size}"}],
        "arm": [{"name": arm.id, "description": arm.label} for arm in study.arms],
    }
