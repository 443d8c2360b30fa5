"""The clinicians' screens: a static single-page app served by the app over /api/v1, and browser sessions."""
