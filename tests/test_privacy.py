"""Patient privacy end to end: a DICOM carrying a name, an ID, a birth date, an institution and the burned-in
annotation flag goes through the real app (scripted API and the browser UI); none of it may surface anywhere.

The app runs as its own process (``python app.py``) because the process is the point: its whole log (stdout and
stderr) and its private TMPDIR are what is searched. This is the suite's test that uploads are deleted.

Checked after every request: the API response or error, the page (text and HTML), the app's log, and every file
under the app's upload folder and its private temporary folder (TMPDIR), none of which may hold an upload or any of
the identifying values. The burned-in flag itself must come back as a warning that quotes nothing.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from spinecad.imaging.slice import BURNED_IN_TEXT_WARNING
from tests.app_fixture import running_app
from tests.conftest import EXAMPLES_DIR

pytestmark = pytest.mark.slow

IDENTITY = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-99172",
    "PatientBirthDate": "19540230",  # an impossible date: pydicom's validation warning would quote it
    "InstitutionName": "St Example Hospital",
    "ReferringPhysicianName": "Watson^John",
    "AccessionNumber": "ACC-55512",
}
SECRETS = ("Doe", "Jane", "MRN-99172", "19540230", "1954", "St Example", "Watson", "ACC-55512")
FILE_NAME = "Jane_Doe_MRN-99172_lumbar"  # the upload's own name identifies her too
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def identifying_dicom(**changes: object) -> bytes:
    """The committed severe example slice, with the identity above, burned-in text flagged, and ``changes``."""
    ds = pydicom.dcmread(EXAMPLES_DIR / "severe_axial.dcm")
    for keyword, value in {**IDENTITY, "BurnedInAnnotation": "YES", **changes}.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def leaks(text: str) -> list[str]:
    return [secret for secret in (*SECRETS, FILE_NAME) if secret in text]


def files_holding_secrets(*roots: Path) -> list[str]:
    """Every file under ``roots`` that is an upload or holds an identifying value (name or contents)."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                if FILE_NAME in path.name or any(secret.encode() in data for secret in SECRETS):
                    found.append(str(path.relative_to(root)))
    return found


def leftover_uploads(upload_root: Path) -> list[str]:
    return [str(p.relative_to(upload_root)) for p in upload_root.rglob("*") if p.is_file() and p.stat().st_size]


@pytest.fixture(scope="module")
def app(fixture_manifest, tmp_path_factory) -> Iterator[tuple[str, Path, Path, Path]]:
    """(url, upload folder, private TMPDIR, log) of the app on the fixture set."""
    manifest = fixture_manifest
    work = tmp_path_factory.mktemp("privacy-app")
    uploads, private_tmp, log = work / "gradio-tmp", work / "tmp", work / "app.log"
    private_tmp.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(private_tmp))  # whatever the app writes to a temp file lands where we look
        with running_app(manifest, uploads, log) as url:
            yield url, uploads, private_tmp, log


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app[0], verbose=False)


@pytest.fixture()
def upload(tmp_path):
    """Write ``data`` under the patient's file name, as a visitor's file would be called."""

    def write(data: bytes, suffix: str = ".dcm") -> Path:
        path = tmp_path / (FILE_NAME + suffix)
        path.write_bytes(data)
        return path

    return write


def assert_nothing_left(app) -> None:
    _, uploads, private_tmp, log = app
    assert leftover_uploads(uploads) == []
    assert files_holding_secrets(uploads, private_tmp) == []
    assert leaks(log.read_text(errors="replace")) == []


def test_the_identifying_file_really_carries_the_identity():
    data = identifying_dicom()
    assert all(secret.encode() in data for secret in SECRETS)


def test_api_response_holds_the_warning_and_none_of_the_identity(app, client, upload):
    result = client.predict(handle_file(upload(identifying_dicom())), "L4/L5", api_name="/predict")
    assert BURNED_IN_TEXT_WARNING in result["warnings"]
    assert leaks(repr(result)) == []
    assert_nothing_left(app)


@pytest.mark.parametrize("changes", [
    {"PhotometricInterpretation": "DOE^JANE"},  # identifying text where the reader looks for a defined term
    {"Rows": 0},
], ids=["name-as-photometric", "no-rows"])
def test_api_refusal_quotes_none_of_the_identity(app, client, upload, changes):
    with pytest.raises(AppError) as refused:
        client.predict(handle_file(upload(identifying_dicom(**changes))), "L4/L5", api_name="/predict")
    assert str(refused.value) and leaks(str(refused.value)) == []
    assert_nothing_left(app)


def test_a_truncated_identifying_upload_is_refused_and_removed(app, client, upload):
    data = identifying_dicom()
    with pytest.raises(AppError) as refused:
        client.predict(handle_file(upload(data[: len(data) // 3])), "L4/L5", api_name="/predict")
    assert leaks(str(refused.value)) == []
    assert_nothing_left(app)


def test_the_ui_shows_the_warning_and_none_of_the_identity(app, upload):
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    good, bad = upload(identifying_dicom()), upload(identifying_dicom(Rows=0), suffix="")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(app[0])
        page.set_input_files("#slice-upload input[type=file]", good)
        page.wait_for_function("() => document.querySelector('#headline').innerText.startsWith('L4/L5:')")
        assert "burned-in text" in page.locator("#slice-warnings").inner_text()
        shown = page.content() + page.locator("body").inner_text()
        page.set_input_files("#slice-upload input[type=file]", bad)
        page.wait_for_function(
            "() => document.querySelector('#headline').innerText.includes('Cannot grade this file')")
        shown += page.content() + page.locator("body").inner_text()
        browser.close()
    assert leaks(shown) == []
    assert_nothing_left(app)


def test_identical_uploads_in_flight_together_are_all_graded_and_all_removed(app, upload):
    """The server files an upload under a hash of its bytes and its name, so identical uploads share one path: the
    first request to finish must not take the file away from the others (found by bench/load.py)."""
    path = upload(identifying_dicom())
    clients = [Client(app[0], verbose=False) for _ in range(4)]
    jobs = [client.submit(handle_file(path), "L4/L5", api_name="/predict") for client in clients]
    results = [job.result(timeout=120) for job in jobs]
    assert all(BURNED_IN_TEXT_WARNING in result["warnings"] for result in results)
    assert_nothing_left(app)


def test_a_study_with_the_identity_in_every_file_leaks_none_of_it(app, client, upload, phantom_studies):
    import json
    import zipfile

    from tests.study_fixture import simple_study

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(simple_study(phantom_studies).rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            for keyword, value in {**IDENTITY, "SeriesDescription": f"{ds.SeriesDescription} Doe^Jane"}.items():
                setattr(ds, keyword, value)
            member = io.BytesIO()
            ds.save_as(member)
            archive.writestr(f"{FILE_NAME}/{ds.SeriesNumber}/{ds.InstanceNumber}.dcm", member.getvalue())
    answer = client.predict(handle_file(str(upload(buffer.getvalue(), ".zip"))), '{"L2/L3": {"axial_instance": 5}}',
                            api_name="/predict_study")
    assert answer["levels"]["L2/L3"]["ensemble"] is not None
    assert [s["weighting"] for s in answer["series"]] == ["T2/STIR", "T2"]  # the description's weighting only
    assert leaks(json.dumps(answer)) == []
    with pytest.raises(AppError) as refused:
        client.predict(handle_file(str(upload(buffer.getvalue()[:5000], ".zip"))), "{}", api_name="/predict_study")
    assert leaks(str(refused.value)) == []
    assert_nothing_left(app)
