"""The fake and the portal use the paths, methods, parameters and scopes that
Google's discovery documents name, as google-api-python-client ships them.

The documents are read as JSON files; the client library itself is not imported.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from portal.integrations import google as integration
from portal.transports import gmail
from tests.fakes.google import METHODS


def discovery_document(name: str) -> dict:
    spec = importlib.util.find_spec("googleapiclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "google-api-python-client is not installed; pip install -e '.[test]'"
        )
    folder = Path(spec.submodule_search_locations[0]) / "discovery_cache" / "documents"
    return json.loads((folder / name).read_text(encoding="utf-8"))


def find_method(document: dict, method_id: str) -> dict:
    """Walk the nested resources of a discovery document to a method id."""
    pending = [document]
    while pending:
        node = pending.pop()
        for method in (node.get("methods") or {}).values():
            if method["id"] == method_id:
                return method
        pending.extend((node.get("resources") or {}).values())
    raise AssertionError(f"{method_id} is not in the discovery document")


DOCUMENTS = {"gmail": "gmail.v1.json", "directory": "admin.directory_v1.json"}


@pytest.mark.parametrize("method_id", sorted(METHODS))
def test_fake_method_matches_discovery(method_id):
    document = discovery_document(DOCUMENTS[method_id.split(".")[0]])
    method = find_method(document, method_id)
    fake = METHODS[method_id]

    assert fake.http_method == method["httpMethod"]
    assert fake.path == method["path"]
    assert fake.scopes == frozenset(method["scopes"])
    query = {
        name
        for name, parameter in method.get("parameters", {}).items()
        if parameter["location"] == "query"
    }
    # The fake rejects a parameter it does not know, so each one it knows
    # must be Google's.
    assert fake.query_parameters <= frozenset(query)


def test_root_urls_match_configuration_defaults(app):
    assert discovery_document("gmail.v1.json")["rootUrl"].rstrip("/") == (
        "https://gmail.googleapis.com"
    )
    assert discovery_document("admin.directory_v1.json")["rootUrl"].rstrip("/") == (
        "https://admin.googleapis.com"
    )


@pytest.mark.parametrize(
    ("method_id", "path"),
    [
        ("gmail.users.messages.send", gmail.SEND_PATH),
        ("gmail.users.settings.sendAs.list", gmail.SEND_AS_LIST_PATH),
        ("gmail.users.labels.get", gmail.LABEL_GET_PATH),
        ("directory.users.list", integration.DIRECTORY_USERS_PATH),
    ],
)
def test_portal_paths_match_discovery(method_id, path):
    document = discovery_document(DOCUMENTS[method_id.split(".")[0]])
    assert find_method(document, method_id)["path"] == path


@pytest.mark.parametrize(
    ("method_id", "scope"),
    [
        ("gmail.users.messages.send", integration.SCOPE_SEND),
        ("gmail.users.settings.sendAs.list", integration.SCOPE_SETTINGS),
        ("gmail.users.labels.get", integration.SCOPE_READ),
        ("directory.users.list", integration.SCOPE_DIRECTORY),
    ],
)
def test_portal_scopes_authorise_their_calls(method_id, scope):
    document = discovery_document(DOCUMENTS[method_id.split(".")[0]])
    assert scope in find_method(document, method_id)["scopes"]


def test_directory_parameters_the_portal_sends_exist():
    parameters = find_method(
        discovery_document("admin.directory_v1.json"), "directory.users.list"
    )["parameters"]
    for name in ("customer", "query", "maxResults", "orderBy", "viewType", "pageToken"):
        assert name in parameters
    assert "email" in parameters["orderBy"]["enum"]
    assert "admin_view" in parameters["viewType"]["enum"]
    assert int(parameters["maxResults"]["maximum"]) >= 20
