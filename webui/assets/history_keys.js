// The History tab's keys and selection marks (webui/history_tab.py). While the tab is shown and the focus is not in
// a text field: ←/→ pick the previous/next picture (a click on its thumbnail, so the info and full-size view
// follow), Delete moves the picked one to the trash, "s" stars or unstars it. In Select mode the selected
// thumbnails (the places the selection line lists in data-indices) carry the class history-checked.
(() => {
    const TEXT_TYPES = ['text', 'search', 'number', 'email', 'url', 'password', 'range', 'date', 'time'];

    function historyShown() {
        const gallery = document.getElementById('history_gallery');
        return gallery !== null && gallery.offsetParent !== null;
    }

    function typing(el) {
        if (!el) return false;
        if (el.isContentEditable || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT') return true;
        return el.tagName === 'INPUT' && TEXT_TYPES.includes((el.type || 'text').toLowerCase());
    }

    function thumbnails() {
        return Array.from(document.querySelectorAll('#history_gallery .thumbnail-item'));
    }

    function selectMode() {
        const box = document.querySelector('#history_multiselect input[type=checkbox]');
        return box !== null && box.checked;
    }

    function movePick(step) {
        const thumbs = thumbnails();
        if (thumbs.length === 0) return;
        const current = thumbs.findIndex((t) => t.classList.contains('selected'));
        const next = current < 0 ? 0 : Math.min(thumbs.length - 1, Math.max(0, current + step));
        if (next !== current) thumbs[next].click();
    }

    function clickButton(id) {
        const button = document.getElementById(id);
        if (button && button.offsetParent !== null) button.click();
    }

    document.addEventListener('keydown', (e) => {
        if (e.ctrlKey || e.metaKey || e.altKey || !historyShown() || typing(e.target)) return;
        if ((e.key === 'ArrowLeft' || e.key === 'ArrowRight') && !selectMode()) {
            e.preventDefault();
            movePick(e.key === 'ArrowLeft' ? -1 : 1);
        } else if (e.key === 'Delete') {
            e.preventDefault();
            clickButton('history_delete');
        } else if (e.key === 's' || e.key === 'S') {
            e.preventDefault();
            clickButton('history_star');
        }
    });

    function markSelection() {
        const line = document.getElementById('history_selection_text');
        const places = new Set(((line && line.dataset.indices) || '').split(',').filter((s) => s !== ''));
        thumbnails().forEach((thumb, i) => thumb.classList.toggle('history-checked', places.has(String(i))));
    }

    if (typeof onUiUpdate === 'function') onUiUpdate(markSelection);
})();
