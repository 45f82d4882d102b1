"""Evidence a third party can check (docs/methods.md, "Evidence").

- :mod:`.digests`: per-file SHA-256s and the OpenSSF model signing v1.0 root digest of a model;
- :mod:`.predicate`: the predicate built from a result record (the record is only read);
- :mod:`.statement`: in-toto Statement v1 in a DSSE envelope, EC P-256 keys (securesystemslib);
- :mod:`.keyless`: the same signed keylessly with Sigstore (needs network);
- :mod:`.make` / :mod:`.check`: attest a record; verify a statement (signature, digests, recomputation);
- :mod:`.family`: the Holm family a verdict was adjusted over (scan, grid), in the predicate and checked;
- :mod:`.exports`: CycloneDX 1.6 component and Hub model-card block;
- :mod:`.quant`, :mod:`.quant_packed`, :mod:`.quant_fp8`: quantization faithfulness.

Command lines: ``python -m tracing.attest``, ``python -m tracing.verify``, ``python -m tracing.quantcheck``.
"""
