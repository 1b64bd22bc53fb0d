"""Audit and replay (docs/audit.md): the hash chain (`chain`), verification (`verify`),
export (`export`), fork (`fork`), the deploy-safety check (`replay_check`), time travel
(`time_travel`), parking (`parking`) and patch markers (`patching`).

Import from the modules: events chain their hashes and the engine parks runs, so this package
stays free of eager imports that would make them import each other.
"""
