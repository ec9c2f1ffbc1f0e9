"""The HTTP shim (Bottle): approval, job polling and the operational routes of DESIGN §4."""

from phase1.http.app import Phase1App, create_app

__all__ = ["Phase1App", "create_app"]
