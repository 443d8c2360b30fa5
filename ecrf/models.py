"""Every table of the service, imported in one place so migrations and schema checks see them all."""

import ecrf.audit.models  # noqa: F401
import ecrf.audit.access.models  # noqa: F401
import ecrf.store.models  # noqa: F401
import ecrf.crf.models  # noqa: F401
import ecrf.export.models  # noqa: F401
import ecrf.eligibility.models  # noqa: F401
import ecrf.endpoints.models  # noqa: F401
import ecrf.queries.models  # noqa: F401
import ecrf.randomisation.models  # noqa: F401
import ecrf.safety.models  # noqa: F401
import ecrf.web.models  # noqa: F401
import ecrf.smart.models  # noqa: F401
