"""CONTRACT tests of the hardware evidence producers (haca/enclave/platforms): they run against
doubles of the interfaces, never hardware. Each double follows the interface's documentation
(configfs-tsm: the kernel's ABI document; the NSM: the CBOR request/answer of
aws-nitro-enclaves-nsm-api; NVML: nvidia-ml-py's calls and fields) and answers with the recorded
real documents of tests/fixtures/tee/, so a producer's output is checked to be exactly what the
chain's verifiers accept, at the pinned times the verifiers' own tests use."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from haca.enclave import platforms
from haca.enclave.evidence import PlatformUnavailable, open_platform
from haca.enclave.platforms import detect_platform, to_pem
from haca.enclave.platforms.nitro import NSM_IOCTL, NitroPlatform, NsmError
from haca.enclave.platforms.nvml import NvmlGpus
from haca.enclave.platforms.tsm import VCEK_GUID, VLEK_GUID, LinuxConfigFs, TsmError, TsmPlatform
from haca.proofs.tee.attestation import Attestation, verify_attestation
from haca.proofs.tee.nvidia import parse_report_text, verify_nvidia_report

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "tee"
TDX_QUOTE = (FIX / "tdx" / "tdx_quote").read_bytes()
TDX_COLLATERAL = FIX / "tdx" / "tdx_quote_collateral.json"
TDX_AT = 1751328000  # the TDX and SNP fixtures' pinned time (2025-07-01)
SNP_REPORT = bytes.fromhex((FIX / "snp" / "report_milan.hex").read_text().strip())
SNP_VCEK = (FIX / "snp" / "vcek_milan.der").read_bytes()
SNP_AT = 1751328000
NITRO_COSE = (FIX / "nitro" / "nitro_attestation.bin").read_bytes()[4:4531]  # the untagged COSE_Sign1
NITRO_AT = 1766668537  # the document's own timestamp
GPU_REPORT = parse_report_text((FIX / "nvidia" / "hopperAttestationReport.txt").read_bytes())
GPU_CHAIN = (FIX / "nvidia" / "hopperCertChain.txt").read_bytes()
GPU_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
GPU_AT = 1_800_000_000
BINDING = bytes(range(64))

# AMD's VCEK has serial number 0, which `cryptography` warns about when the verifier loads it.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")


# --- configfs-tsm double --------------------------------------------------------------------------


class TsmDouble(LinuxConfigFs):
    """configfs-tsm per Documentation/ABI/testing/configfs-tsm-report, on a temp directory: making
    an entry makes its attributes (provider, generation 0, inblob, outblob, auxblob); each write
    bumps generation by one (and by `race` more: another writer's writes); outblob is the recorded
    document; removing the entry removes its attributes."""

    def __init__(self, provider: str, outblob: bytes, auxblob: bytes | None = b"", race: int = 0) -> None:
        self.provider, self.outblob, self.auxblob, self.race = provider, outblob, auxblob, race
        self.written: list[bytes] = []

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "inblob").write_bytes(b"")
        (path / "outblob").write_bytes(self.outblob)
        if self.auxblob is not None:
            (path / "auxblob").write_bytes(self.auxblob)

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        self.written.append(data)
        gen = path.parent / "generation"
        gen.write_text(f"{int(gen.read_text()) + 1 + self.race}\n")

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        super().rmdir(path)


def cert_table(entries: list[tuple[uuid.UUID, bytes]], le: bool = False) -> bytes:
    """An SNP certificate table (GHCB spec): 24-byte entries, an all-zero one, then the certificates."""
    head = 24 * (len(entries) + 1)
    rows, blobs = b"", b""
    for guid, blob in entries:
        raw = guid.bytes_le if le else guid.bytes
        rows += raw + (head + len(blobs)).to_bytes(4, "little") + len(blob).to_bytes(4, "little")
        blobs += blob
    return rows + bytes(24) + blobs


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "tsm" / "report"
    path.mkdir(parents=True)
    return path


def tdx(root: Path, fs: TsmDouble) -> TsmPlatform:
    return TsmPlatform("tdx", root, collateral=TDX_COLLATERAL, fs=fs)


def test_tdx_report_from_the_tsm_double_verifies_with_the_chains_verifier(root: Path) -> None:
    """CONTRACT: the quote read from outblob and the collateral file verify as tdx evidence."""
    att = tdx(root, TsmDouble("tdx_guest", TDX_QUOTE)).attest(BINDING)
    assert verify_attestation(att, TDX_AT).format == "tdx"


def test_tdx_writes_exactly_the_binding_to_inblob(root: Path) -> None:
    """CONTRACT: the one write is the 64-byte binding, to inblob."""
    fs = TsmDouble("tdx_guest", TDX_QUOTE)
    tdx(root, fs).attest(BINDING)
    assert fs.written == [BINDING]


def test_snp_report_with_the_vcek_from_auxblob_verifies_with_the_chains_verifier(root: Path) -> None:
    """CONTRACT: the report from outblob and the VCEK cut from the auxblob table verify as snp."""
    fs = TsmDouble("sev_guest", SNP_REPORT, cert_table([(VCEK_GUID, SNP_VCEK)]))
    att = TsmPlatform("snp", root, fs=fs).attest(BINDING)
    assert verify_attestation(att, SNP_AT).measurements["measurement"].hex().startswith("7a1e5c26")


def test_snp_vcek_is_found_under_a_mixed_endian_guid_among_other_entries(root: Path) -> None:
    """CONTRACT: a table written with mixed-endian GUIDs and other entries still gives the VCEK."""
    other = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")  # ASK
    fs = TsmDouble(
        "sev_guest", SNP_REPORT, cert_table([(other, b"\x30\x03\x02\x01\x00"), (VCEK_GUID, SNP_VCEK)], le=True)
    )
    assert TsmPlatform("snp", root, fs=fs).attest(BINDING).endorsements == SNP_VCEK


def test_snp_without_a_certificate_table_takes_the_operators_vcek_file(root: Path, tmp_path: Path) -> None:
    """CONTRACT: an empty auxblob falls back to the VCEK file the operator fetched (PEM here)."""
    pem = tmp_path / "vcek.pem"
    pem.write_bytes(to_pem([SNP_VCEK]))
    att = TsmPlatform("snp", root, vcek=pem, fs=TsmDouble("sev_guest", SNP_REPORT, b"")).attest(BINDING)
    assert att == Attestation("snp", SNP_REPORT, SNP_VCEK)


def test_snp_without_any_vcek_is_unavailable(root: Path) -> None:
    """CONTRACT: no table and no VCEK file: a clear PlatformUnavailable, not evidence that cannot verify."""
    with pytest.raises(PlatformUnavailable, match="no VCEK"):
        TsmPlatform("snp", root, fs=TsmDouble("sev_guest", SNP_REPORT, None)).attest(BINDING)


def test_snp_table_with_only_a_vlek_is_refused(root: Path) -> None:
    """CONTRACT: a VLEK-endorsed host is named, since the chain takes VCEK-signed reports only."""
    fs = TsmDouble("sev_guest", SNP_REPORT, cert_table([(VLEK_GUID, SNP_VCEK)]))
    with pytest.raises(TsmError, match="VLEK"):
        TsmPlatform("snp", root, fs=fs).attest(BINDING)


def test_a_generation_that_moved_by_more_than_our_write_is_refused(root: Path) -> None:
    """CONTRACT: another writer raced the request (generation moved by 2): no report."""
    with pytest.raises(TsmError, match="generation moved from 0 to 2"):
        tdx(root, TsmDouble("tdx_guest", TDX_QUOTE, race=1)).attest(BINDING)


def test_a_provider_other_than_the_one_asked_is_refused(root: Path) -> None:
    """CONTRACT: asking for tdx on an SEV-SNP guest is refused before anything is written."""
    with pytest.raises(TsmError, match="'sev_guest', not 'tdx_guest'"):
        tdx(root, TsmDouble("sev_guest", SNP_REPORT)).attest(BINDING)


def test_the_report_entry_is_removed_after_a_refused_report(root: Path) -> None:
    """CONTRACT: the entry made for a report is removed even when the report is refused."""
    with pytest.raises(TsmError):
        tdx(root, TsmDouble("tdx_guest", TDX_QUOTE, race=1)).attest(BINDING)
    assert list(root.iterdir()) == []


def test_a_missing_report_interface_is_unavailable(tmp_path: Path) -> None:
    """CONTRACT: no configfs-tsm directory: PlatformUnavailable at start."""
    with pytest.raises(PlatformUnavailable, match="no configfs-tsm report interface"):
        TsmPlatform("snp", tmp_path / "absent")


def test_tdx_without_collateral_is_unavailable(root: Path) -> None:
    """CONTRACT: tdx with no DCAP collateral file: PlatformUnavailable at start, naming the collateral."""
    with pytest.raises(PlatformUnavailable, match="DCAP collateral"):
        TsmPlatform("tdx", root, fs=TsmDouble("tdx_guest", TDX_QUOTE))


# --- Nitro ----------------------------------------------------------------------------------------


class NsmDouble:
    """The NSM driver's exchange: records the CBOR request, answers the given CBOR."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[Any] = []

    def exchange(self, request: bytes) -> bytes:
        self.requests.append(cbor2.loads(request))
        return cbor2.dumps(self.answer) + bytes(64)  # the rest of the driver's buffer


def test_nitro_document_from_the_nsm_double_verifies_with_the_chains_verifier() -> None:
    """CONTRACT: the document in the NSM's Attestation answer verifies as nitro evidence."""
    nsm = NsmDouble({"Attestation": {"document": NITRO_COSE}})
    att = NitroPlatform(transport=nsm).attest(BINDING)
    assert verify_attestation(att, NITRO_AT).format == "nitro"


def test_nitro_sends_the_binding_as_user_data() -> None:
    """CONTRACT: the request is {"Attestation": {user_data: binding, nonce: null, public_key: null}}."""
    nsm = NsmDouble({"Attestation": {"document": NITRO_COSE}})
    NitroPlatform(transport=nsm).attest(BINDING)
    assert nsm.requests == [{"Attestation": {"user_data": BINDING, "nonce": None, "public_key": None}}]


def test_an_nsm_error_answer_is_a_clear_error() -> None:
    """CONTRACT: {"Error": "InternalError"} is refused with the NSM's error code in the message."""
    with pytest.raises(NsmError, match="refused the attestation request: InternalError"):
        NitroPlatform(transport=NsmDouble({"Error": "InternalError"})).attest(BINDING)


def test_nitro_without_the_nsm_device_is_unavailable(tmp_path: Path) -> None:
    """CONTRACT: no /dev/nsm: PlatformUnavailable at start."""
    with pytest.raises(PlatformUnavailable, match="no Nitro Security Module"):
        NitroPlatform(tmp_path / "nsm")


def test_the_nsm_ioctl_is_iowr_0x0a_0_of_two_iovecs() -> None:
    """CONTRACT: the request number the NSM driver answers: _IOWR(0x0A, 0, struct of two iovecs)."""
    assert NSM_IOCTL == 0xC0200A00


def test_the_ioctl_transport_on_a_device_that_is_not_the_nsm_is_a_clear_error(tmp_path: Path) -> None:
    """CONTRACT: the real transport builds its message and calls ioctl; a plain file refuses it (ENOTTY)."""
    device = tmp_path / "nsm"
    device.touch()
    with pytest.raises(NsmError, match=r"the NSM request on .* failed"):
        NitroPlatform(device).attest(BINDING)


# --- NVML -----------------------------------------------------------------------------------------


class NvmlDouble:
    """nvidia-ml-py's calls used by NvmlGpus, answering the recorded H100 report and chain in
    fixed-size buffers with their sizes, as NVML's structures do."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: int = 1, cc: int = 1, devtools: int = 0, chain: bytes = GPU_CHAIN) -> None:
        self.gpus, self.cc, self.devtools, self.chain = gpus, cc, devtools, chain
        self.nonces: list[bytes] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetConfComputeState(self) -> Any:
        return SimpleNamespace(environment=1, ccFeature=self.cc, devToolsMode=self.devtools)

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
        self.nonces.append(bytes(nonce))
        return SimpleNamespace(attestationReport=list(GPU_REPORT) + [0] * 64, attestationReportSize=len(GPU_REPORT))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        return SimpleNamespace(
            attestationCertChain=list(self.chain) + [0] * 64, attestationCertChainSize=len(self.chain)
        )


def test_nvml_report_and_chain_verify_with_the_fixtures_nonce() -> None:
    """CONTRACT: the report and chain from the NVML double verify with verify_nvidia_report."""
    (ev,) = NvmlGpus(NvmlDouble()).reports(GPU_NONCE)
    assert verify_nvidia_report(ev.report, ev.chain, GPU_AT, GPU_NONCE).nonce == GPU_NONCE


def test_nvml_gives_one_report_per_gpu() -> None:
    """CONTRACT: every GPU NVML sees is asked for a report over the same nonce."""
    nvml = NvmlDouble(gpus=2)
    NvmlGpus(nvml).reports(GPU_NONCE)
    assert nvml.nonces == [GPU_NONCE, GPU_NONCE]


def test_a_der_chain_from_nvml_is_converted_to_pem_that_verifies() -> None:
    """CONTRACT: a chain given as DER certificates one after another becomes PEM the verifier takes."""
    der = b"".join(c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(GPU_CHAIN))
    (ev,) = NvmlGpus(NvmlDouble(chain=der)).reports(GPU_NONCE)
    assert verify_nvidia_report(ev.report, ev.chain, GPU_AT, GPU_NONCE).nonce == GPU_NONCE


def test_a_report_for_another_nonce_is_refused() -> None:
    """CONTRACT: NVML's report must carry the nonce asked (a stale report is refused)."""
    with pytest.raises(PlatformUnavailable, match="not for the nonce asked"):
        NvmlGpus(NvmlDouble()).reports(bytes(32))


def test_confidential_computing_off_is_unavailable() -> None:
    """CONTRACT: CC feature off: PlatformUnavailable saying so."""
    with pytest.raises(PlatformUnavailable, match="confidential computing is off"):
        NvmlGpus(NvmlDouble(cc=0)).reports(GPU_NONCE)


def test_confidential_computing_in_devtools_mode_is_unavailable() -> None:
    """CONTRACT: devtools mode is not confidential: PlatformUnavailable."""
    with pytest.raises(PlatformUnavailable, match="devtools mode"):
        NvmlGpus(NvmlDouble(devtools=1)).reports(GPU_NONCE)


def test_no_gpu_is_unavailable() -> None:
    """CONTRACT: NVML seeing no GPU: PlatformUnavailable."""
    with pytest.raises(PlatformUnavailable, match="no GPU"):
        NvmlGpus(NvmlDouble(gpus=0)).reports(GPU_NONCE)


def test_an_nvml_without_the_cc_calls_is_unavailable() -> None:
    """CONTRACT: an nvidia-ml-py too old for confidential computing is named, not failed on later."""
    with pytest.raises(PlatformUnavailable, match="no confidential-computing calls"):
        NvmlGpus(SimpleNamespace(NVMLError=Exception))


def test_without_pynvml_the_nvidia_gpus_are_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTRACT: nvidia-ml-py not installed: PlatformUnavailable naming the package."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(PlatformUnavailable, match="pip install nvidia-ml-py"):
        NvmlGpus()


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "found"), [("tdx_guest", "tdx"), ("sev_guest", "snp")])
def test_detect_reads_the_tsm_provider(root: Path, tmp_path: Path, provider: str, found: str) -> None:
    """CONTRACT: configfs-tsm's provider attribute names the platform."""
    assert detect_platform(root, tmp_path / "nsm", fs=TsmDouble(provider, b"")) == found


def test_detect_leaves_no_report_entry_behind(root: Path, tmp_path: Path) -> None:
    """CONTRACT: the entry made to read the provider is removed."""
    detect_platform(root, tmp_path / "nsm", fs=TsmDouble("tdx_guest", b""))
    assert list(root.iterdir()) == []


def test_detect_refuses_a_provider_haca_does_not_verify(root: Path, tmp_path: Path) -> None:
    """CONTRACT: another TSM (e.g. Arm CCA) is named, not taken for tdx or snp."""
    with pytest.raises(PlatformUnavailable, match="arm_cca_guest"):
        detect_platform(root, tmp_path / "nsm", fs=TsmDouble("arm_cca_guest", b""))


def test_detect_finds_nitro_by_its_device(tmp_path: Path) -> None:
    """CONTRACT: an NSM device (and no configfs-tsm) is nitro."""
    (tmp_path / "nsm").touch()
    assert detect_platform(tmp_path / "no-tsm", tmp_path / "nsm") == "nitro"


def test_detect_finds_nothing_on_a_plain_machine(tmp_path: Path) -> None:
    """CONTRACT: neither interface: None (never "dev")."""
    assert detect_platform(tmp_path / "no-tsm", tmp_path / "nsm") is None


def test_auto_with_no_tee_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTRACT: open_platform("auto") on a machine with neither interface raises, never falls back to dev."""
    monkeypatch.setattr(platforms, "detect_platform", lambda: detect_platform(tmp_path / "no-tsm", tmp_path / "nsm"))
    with pytest.raises(PlatformUnavailable, match="found no TEE"):
        open_platform("auto", bytes(48))
