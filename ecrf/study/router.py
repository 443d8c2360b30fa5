"""GET /api/v1/study: the loaded study definition."""

from typing import Any

from fastapi import APIRouter, Depends, Request

from ecrf.auth.dependencies import requires

router = APIRouter(tags=["study"])


@router.get("/study", dependencies=[Depends(requires("study.read"))])
def read_study(request: Request) -> dict[str, Any]:
    """Sites, arms, visits with their windows, forms and criteria of the loaded study; its randomisation and SAE
    clock settings (null when the study has none)."""
    study = request.app.state.runtime.study
    scheme = getattr(request.app.state.runtime, "randomisation", None)
    clock = getattr(request.app.state.runtime, "safety", None)
    return {
        "id": study.id,
        "title": study.title,
        "identifier_system": study.identifier_system,
        "planned_size": study.planned_size,
        "sites": [
            {"id": s.id, "name": s.name, "mrn_system": s.mrn_system, "time_zone": s.time_zone} for s in study.sites
        ],
        "arms": [a.model_dump(mode="json") for a in study.arms],
        "visits": [v.model_dump(mode="json") for v in study.visits],
        "forms": [
            {
                "id": f.id,
                "title": f.title,
                "visits": list(f.visits),
                "kind": f.kind,
                "repeating": f.repeating,
                "max_entries": f.max_entries,
                "items": [i.id for i in f.items],
            }
            for f in study.forms
        ],
        "criteria": [{"id": c.id, "kind": c.kind, "description": c.description} for c in study.criteria],
        # randomisation by the system: the form and visit it writes, and its items no one types
        "randomisation": {"form": scheme.form, "visit": scheme.visit, "derived_items": sorted(scheme.derived_items)}
        if scheme is not None
        else None,
        # the SAE reporting clock (forms/safety.yaml): the form and boolean item that start it, its window
        "safety": {
            "form": clock.form,
            "serious_item": clock.serious_item,
            "report_within_hours": clock.due_within.total_seconds() / 3600,
        }
        if clock is not None
        else None,
    }
