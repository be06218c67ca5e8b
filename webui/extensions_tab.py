"""The Extensions tab (A1111's elem_ids): Installed / Available / Install from URL, over ``modules/extensions.py``.

Changes take effect after a restart: "Apply" saves ``disabled_extensions``/``disable_all_extensions`` and says so;
the page cannot safely re-execute the server. Installing, updating and applying are refused with A1111's message
when the server is reachable from other machines (``--listen``, ``--share``, ``--server-name``) unless
``--enable-insecure-extension-access`` is given.
"""
from __future__ import annotations

import html
import logging
import time
from dataclasses import asdict

import gradio as gr

from modules import extension_faults
from modules import extensions as ext_mod
from modules.extensions import ExtensionError, IndexEntry, InstallerError

log = logging.getLogger(__name__)

RESTART_HINT = "Restart the program (stop it and run <code>python launch.py</code> again) to load the change."
_DISABLE_CHOICES = ["none", "extra", "all"]
_STYLE = """<style>
.sd-ext-table { width: 100%; border-collapse: collapse; font-size: 0.92em; }
.sd-ext-table th, .sd-ext-table td { text-align: left; padding: 4px 8px; border-bottom: 1px solid rgba(128,128,128,.25);
  vertical-align: top; }
.sd-ext-table td.sd-ext-desc { max-width: 40em; }
.sd-ext-table .sd-ext-off { opacity: 0.55; }
.sd-ext-table .sd-ext-failed { background: rgba(220, 38, 38, 0.12); }
.sd-ext-table .sd-ext-failed td:first-child { border-left: 4px solid rgb(220, 38, 38); }
.sd-ext-tag { display: inline-block; padding: 0 6px; margin: 1px 2px; border-radius: 8px; font-size: 0.85em;
  background: rgba(128,128,128,.18); }
.sd-ext-behind { color: #d80; font-weight: 600; }
</style>"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _error(message: str) -> str:
    return f"<div class='sd-error' style='white-space: pre-wrap'>⚠ {_e(message)}</div>"


def _note(message_html: str) -> str:
    return f"<div class='sd-note'>{message_html}</div>"


def _date(timestamp: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


def _link(url: str | None, text: str | None = None) -> str:
    """A link for web URLs; other URLs (file://, local paths, ssh) as plain text."""
    if not url:
        return ""
    if url.startswith(("https://", "http://")):
        return f"<a href='{_e(url)}' target='_blank' rel='noopener noreferrer'>{_e(text or url)}</a>"
    return _e(text or url)


class ExtensionsView:
    """State and actions behind the tab (plain methods returning HTML/updates, so tests can call them too)."""

    def __init__(self, engine, args):
        self.engine, self.args = engine, args
        self.paths, self.settings = engine.paths, engine.settings
        self.updates: dict[str, str] = {}  # name → check_for_updates() result, until the next check

    # -- installed ------------------------------------------------------------------------------------------------

    def installed(self) -> list[ext_mod.Extension]:
        found = ext_mod.discover_configured(self.paths, self.settings, self.args)
        for ext in found:
            ext.read_git_info()
        return found

    def user_enabled(self, found: list[ext_mod.Extension]) -> list[str]:
        """Checked boxes: the extensions not in ``disabled_extensions`` (``disable_all`` is shown separately)."""
        disabled = set(self.settings.get("disabled_extensions", []) or [])
        return [e.name for e in found if e.name not in disabled]

    def errors_html(self) -> str:
        errors = list(getattr(self.engine, "extension_errors", None) or [])
        if not errors:
            return ""
        items = "".join(f"<li style='white-space: pre-wrap'>{_e(m)}</li>" for m in errors)
        return f"<div class='sd-error'>⚠ Some extensions failed to load:<ul>{items}</ul></div>"

    def table_html(self, found: list[ext_mod.Extension]) -> str:
        if not found:
            return _note(f"No extensions installed. Put them in <code>{_e(self.paths.extensions_dir)}</code> or use "
                         f"the <b>Available</b> or <b>Install from URL</b> tabs.")
        rows = []
        for ext in found:
            update = self.updates.get(ext.name, "")
            update_html = ("<span class='sd-ext-behind'>behind</span>" if update == "behind" else _e(update))
            state = "enabled" if ext.enabled else "disabled"
            warn = "".join(f"<div class='sd-error'>{_e(w)}</div>" for w in ext.warnings)
            faults = extension_faults.faults.for_extension(ext.name)
            warn += "".join(f"<div class='sd-error sd-ext-fault' title='{_e(f.traceback)}'>⚠ {_e(f.where)}: "
                            f"{_e(f.message)}{f' (×{f.count})' if f.count > 1 else ''}</div>" for f in faults)
            row_class = "sd-ext-failed" if faults else ("" if ext.enabled else "sd-ext-off")
            rows.append(
                f"<tr class='{row_class}'><td><b>{_e(ext.name)}</b>"
                f"{' <span class=sd-ext-tag>built-in</span>' if ext.is_builtin else ''}{warn}</td>"
                f"<td>{_link(ext.remote)}</td><td>{_e(ext.branch)}</td><td><code>{_e(ext.version)}</code></td>"
                f"<td>{_date(ext.commit_date)}</td><td>{state}</td><td>{update_html}</td></tr>")
        head = ("<tr><th>Extension</th><th>URL</th><th>Branch</th><th>Version</th><th>Date</th><th>State</th>"
                "<th>Update</th></tr>")
        return f"{_STYLE}<table class='sd-ext-table'>{head}{''.join(rows)}</table>"

    def refresh(self):
        """(errors, table, enabled checkboxes, disable-all radio) as they are on disk now."""
        found = self.installed()
        errors = self.errors_html()
        return (gr.update(value=errors, visible=bool(errors)), self.table_html(found),
                gr.update(choices=[e.name for e in found], value=self.user_enabled(found)),
                gr.update(value=ext_mod.disable_mode(self.settings)))

    def access_note(self) -> str:
        if ext_mod.access_allowed(self.args):
            return ""
        return _error(f"{ext_mod.ACCESS_DENIED} (--listen, --share or --server-name): installing, updating and "
                      f"enabling extensions from the page is off. Start with --enable-insecure-extension-access "
                      f"to allow it.")

    def apply(self, checked: list[str], disable_all: str) -> str:
        try:
            ext_mod.check_access(self.args)
        except ExtensionError as e:
            return _error(str(e))
        found = self.installed()
        checked = set(checked or [])
        disabled = [e.name for e in found if e.name not in checked]
        mode = disable_all if disable_all in _DISABLE_CHOICES else "none"
        try:
            self.settings.update({"disabled_extensions": disabled, "disable_all_extensions": mode})
            self.settings.save()
        except (ValueError, OSError) as e:
            return _error(f"could not save the settings: {e}")
        flags = ""
        if ext_mod.disable_mode(None, self.args) != "none":
            flags = " (the command line's --disable-all-extensions / --disable-extra-extensions still applies)"
        shown = ", ".join(disabled) if disabled else "none"
        return _note(f"Saved. Disabled: {_e(shown)}; disable all: {_e(mode)}{_e(flags)}. {RESTART_HINT}")

    def check_updates(self, progress=None):
        try:
            ext_mod.check_access(self.args)
        except ExtensionError as e:
            return _error(str(e)), gr.update(), gr.update()
        found = [e for e in self.installed() if e.is_git]
        self.updates = {}
        for i, ext in enumerate(found):
            if progress is not None:
                progress((i, len(found)), desc=f"Checking {ext.name}")
            self.updates[ext.name] = ext_mod.check_for_updates(ext)
        behind = [n for n, s in self.updates.items() if s == "behind"]
        if not found:
            message = _note("No extension is a git repository; nothing to check.")
        elif behind:
            message = _note(f"{len(behind)} of {len(found)} can be updated: {_e(', '.join(behind))}. "
                            f"Tick them below and press <b>Update selected</b>.")
        else:
            message = _note(f"All {len(found)} are up to date (or cannot be checked: see the Update column).")
        return message, self.table_html(self.installed()), gr.update(choices=behind, value=behind,
                                                                     visible=bool(behind))

    def update_selected(self, names: list[str]):
        try:
            ext_mod.check_access(self.args)
        except ExtensionError as e:
            return _error(str(e)), gr.update(), gr.update()
        if not names:
            return _note("Nothing selected: press <b>Check for updates</b> first."), gr.update(), gr.update()
        by_name = {e.name: e for e in self.installed()}
        done, failed = [], []
        for name in names:
            ext = by_name.get(name)
            if ext is None:
                failed.append(f"{name}: not installed any more")
                continue
            try:
                done.append(ext_mod.update(ext))
                self.updates[name] = "latest"
            except ExtensionError as e:
                failed.append(f"{name}: {e}")
        parts = []
        if done:
            parts.append(_note(_e("; ".join(done)) + ". " + RESTART_HINT))
        if failed:
            parts.append(_error("Update failed for " + "\n".join(failed)))
        left = [n for n, s in self.updates.items() if s == "behind"]
        return "".join(parts), self.table_html(self.installed()), gr.update(choices=left, value=left,
                                                                            visible=bool(left))

    # -- install -------------------------------------------------------------------------------------------------

    def install(self, url: str, branch: str = "", dirname: str = "") -> str:
        """Install from a git URL; the HTML message for the page (never raises)."""
        try:
            ext = ext_mod.install_from_url(self.paths, url, dirname or None, branch or None, args=self.args)
        except InstallerError as e:
            return _error(str(e))
        except ExtensionError as e:
            return _error(f"Could not install {url.strip() or 'the extension'}: {e}")
        where = f"extensions/{ext.name}"
        version = f" at {ext.version}" if ext.version else ""
        return _note(f"Installed <b>{_e(ext.name)}</b> into <code>{_e(where)}</code>{_e(version)}. {RESTART_HINT}")

    # -- the index -----------------------------------------------------------------------------------------------

    def load_index(self, source: str):
        """(status html, entries as dicts) from the index at ``source``; a good source is remembered."""
        source = (source or "").strip()
        try:
            entries = ext_mod.load_index(source)
        except ExtensionError as e:
            return _error(f"{e}\nNo network? Download index.json elsewhere and enter the path of the file."), []
        if source != self.settings.get("extensions_index_url", None):
            try:
                self.settings.set("extensions_index_url", source)
                self.settings.save()
            except (ValueError, OSError) as e:
                log.warning("could not remember the extension index source: %s", e)
        return _note(f"{len(entries)} extensions in the index."), [asdict(e) for e in entries]

    def installed_urls(self) -> tuple[set[str], set[str]]:
        found = self.installed()
        return {ext_mod.normalize_url(e.remote) for e in found if e.remote}, {e.name.lower() for e in found}

    def is_installed(self, entry: IndexEntry, urls: set[str], names: set[str]) -> bool:
        return ext_mod.normalize_url(entry.url) in urls or ext_mod.name_from_url(entry.url).lower() in names

    def available(self, entries: list[dict], search: str, hide_installed: bool):
        """(table html, dropdown update) for the loaded index, filtered."""
        if not entries:
            return "", gr.update(choices=[], value=[])
        urls, names = self.installed_urls()
        query = (search or "").strip().lower()
        rows, choices = [], []
        for data in entries:
            entry = IndexEntry(**data)
            installed = self.is_installed(entry, urls, names)
            if installed and hide_installed:
                continue
            text = " ".join([entry.name, entry.description, " ".join(entry.tags)]).lower()
            if query and query not in text:
                continue
            if not installed:
                choices.append((entry.name, entry.url))
            tags = "".join(f"<span class='sd-ext-tag'>{_e(t)}</span>" for t in entry.tags)
            mark = "<b>installed</b>" if installed else ""
            rows.append(f"<tr class='{'sd-ext-off' if installed else ''}'><td><b>{_link(entry.url, entry.name)}</b>"
                        f"<div>{tags}</div></td><td class='sd-ext-desc'>{_e(entry.description)}</td>"
                        f"<td>{_e(entry.added)}</td><td>{entry.stars}</td><td>{mark}</td></tr>")
        head = "<tr><th>Extension</th><th>Description</th><th>Added</th><th>Stars</th><th></th></tr>"
        shown = f"<div class='sd-note'>{len(rows)} shown of {len(entries)}</div>"
        table = f"{_STYLE}{shown}<table class='sd-ext-table'>{head}{''.join(rows)}</table>"
        return table, gr.update(choices=choices, value=[])

    def install_many(self, urls: list[str]) -> str:
        if not urls:
            return _note("Select one or more extensions first.")
        return "".join(self.install(url) for url in urls)


def build_extensions(engine, args, tab=None) -> dict:
    """The tab's contents (call inside ``gr.Tab("Extensions", elem_id="tab_extensions")``)."""
    view = ExtensionsView(engine, args)
    found = view.installed()
    with gr.Tabs(elem_id="tabs_extensions"):
        with gr.Tab("Installed", id="installed", elem_id="extensions_installed_tab"):
            errors = gr.HTML(view.errors_html(), elem_id="extensions_errors", visible=bool(view.errors_html()))
            gr.HTML(view.access_note(), elem_id="extensions_access_note", visible=bool(view.access_note()))
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    with gr.Row():
                        apply = gr.Button("Apply (restart needed)", variant="primary", elem_id="extensions_apply")
                        check = gr.Button("Check for updates", elem_id="extensions_check")
                        update = gr.Button("Update selected", elem_id="extensions_update")
                    status = gr.HTML(elem_id="extensions_installed_status")
                disable_all = gr.Radio(_DISABLE_CHOICES, value=ext_mod.disable_mode(engine.settings),
                                       label="Disable all extensions", elem_id="extensions_disable_all", scale=1)
            enabled = gr.CheckboxGroup([e.name for e in found], value=view.user_enabled(found),
                                       label="Enabled extensions", elem_id="extensions_enabled")
            to_update = gr.CheckboxGroup([], label="Update these", elem_id="extensions_to_update", visible=False)
            table = gr.HTML(view.table_html(found), elem_id="extensions_installed_table")
        with gr.Tab("Available", id="available", elem_id="extensions_available_tab"):
            with gr.Row():
                source = gr.Textbox(ext_mod.index_source(engine.settings), label="Extension index (URL or file)",
                                    elem_id="extensions_index_url", scale=5)
                load = gr.Button("Load", variant="primary", elem_id="extensions_available_load", scale=1)
            with gr.Row():
                search = gr.Textbox(label="Search (press Enter)", elem_id="extensions_search", scale=5)
                hide_installed = gr.Checkbox(True, label="Hide installed", elem_id="extensions_hide_installed",
                                             scale=1)
            index_status = gr.HTML(elem_id="extensions_available_status")
            with gr.Row():
                pick = gr.Dropdown([], multiselect=True, label="Extensions to install",
                                   elem_id="extensions_available_selected", scale=5)
                install_picked = gr.Button("Install selected", elem_id="extensions_install_selected", scale=1)
            index_entries = gr.State([])
            available = gr.HTML(elem_id="extensions_available_table")
        with gr.Tab("Install from URL", id="install_from_url", elem_id="extensions_install_tab"):
            url = gr.Textbox(label="URL for extension's git repository", elem_id="extension_install_url")
            branch = gr.Textbox(label="Specific branch name", placeholder="Leave empty for default main branch",
                                elem_id="extension_install_branch")
            dirname = gr.Textbox(label="Local directory name", placeholder="Leave empty for auto",
                                 elem_id="extension_install_dirname")
            install = gr.Button("Install", variant="primary", elem_id="extension_install_button")
            install_result = gr.HTML(elem_id="extension_install_result")

    installed_outputs = [errors, table, enabled, disable_all]

    def after_install(message, entries, query, hide):
        return (message, *view.refresh(), *view.available(entries, query, hide))

    apply.click(view.apply, [enabled, disable_all], status)
    check.click(lambda progress=gr.Progress(): view.check_updates(progress), None, [status, table, to_update],
                concurrency_id="extensions")
    update.click(view.update_selected, to_update, [status, table, to_update], concurrency_id="extensions")
    install.click(lambda u, b, d, entries, q, h: after_install(view.install(u, b, d), entries, q, h),
                  [url, branch, dirname, index_entries, search, hide_installed],
                  [install_result, *installed_outputs, available, pick], concurrency_id="extensions")

    def do_load(src, query, hide):
        message, entries = view.load_index(src)
        return (message, entries, *view.available(entries, query, hide))

    load.click(do_load, [source, search, hide_installed], [index_status, index_entries, available, pick])
    for trigger in (search.submit, hide_installed.input):
        trigger(view.available, [index_entries, search, hide_installed], [available, pick], queue=False)
    install_picked.click(lambda urls, entries, q, h: after_install(view.install_many(urls), entries, q, h),
                         [pick, index_entries, search, hide_installed],
                         [index_status, *installed_outputs, available, pick], concurrency_id="extensions")
    if tab is not None:  # each opening of the tab shows what is on disk now, not what was there at start-up
        tab.select(view.refresh, None, installed_outputs, queue=False, show_progress="hidden")
    return {"view": view, "install": install, "table": table}
