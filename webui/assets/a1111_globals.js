// Page-side names A1111 extension scripts rely on (A1111's script.js, ui.js, progressbar.js): gradioApp(), the
// onUiLoaded/onUiUpdate/... callback registries, the current tab, updateInput, requestProgress, the switch_to_*
// and submit helpers, and the `opts`, `titles` and `localization` objects. Written for Gradio 6's page: there is no
// shadow root, and a tab's contents are only built when it is first shown, so before onUiLoaded fires the img2img
// tab and the extra-networks panels are shown once (out of sight) so that their elements exist, as in A1111 — on a
// page with extension scripts only (`sdExtensionScripts`, set by the server): nothing else looks for them, and
// building them costs ~0.15 of a page load's ~3 CPU-seconds.
var opts = __OPTS__;
var titles = {};
var localization = window.localization || {};
var uiUpdateCallbacks = [];
var uiAfterUpdateCallbacks = [];
var uiLoadedCallbacks = [];
var uiTabChangeCallbacks = [];
var optionsChangedCallbacks = [];
var optionsAvailableCallbacks = [];
var uiCurrentTab = null;
var sdExtensionScripts = __EXTENSION_SCRIPTS__;

function gradioApp() {
    const elems = document.getElementsByTagName('gradio-app');
    const elem = elems.length === 0 ? document : elems[0];
    if (elem !== document) {
        elem.getElementById = function(id) { return document.getElementById(id); };
    }
    return elem.shadowRoot ? elem.shadowRoot : elem;
}

// Each callback runs on its own: one extension's error is logged and the others still run.
function executeCallbacks(queue, arg) {
    for (const callback of queue) {
        try {
            callback(arg);
        } catch (e) {
            console.error("error running callback", callback, ":", e);
        }
    }
}

var sdPageLoaded = false;

function onUiUpdate(callback) { uiUpdateCallbacks.push(callback); }
function onAfterUiUpdate(callback) { uiAfterUpdateCallbacks.push(callback); }
function onUiTabChange(callback) { uiTabChangeCallbacks.push(callback); }
function onOptionsChanged(callback) { optionsChangedCallbacks.push(callback); }
function onUiLoaded(callback) {
    uiLoadedCallbacks.push(callback);
    if (sdPageLoaded) {  // registered after the page was built (a script loaded late): run it now, once
        setTimeout(function() { executeCallbacks([callback]); }, 0);
    }
}
function onOptionsAvailable(callback) {
    optionsAvailableCallbacks.push(callback);
    if (sdPageLoaded) {
        setTimeout(function() { executeCallbacks([callback]); }, 0);
    }
}

// The top-level tab button that is selected (A1111: `#tabs > .tab-nav > button.selected`).
function get_uiCurrentTab() {
    return gradioApp().querySelector('#tabs > .tab-nav > button.selected, ' +
        '#tabs > .tab-wrapper button[role="tab"][aria-selected="true"]');
}

// The shown top-level tab's contents (its id is `tab_<name>`, e.g. tab_txt2img).
function get_uiCurrentTabContent() {
    return gradioApp().querySelector('#tabs > .tabitem[id^=tab_]:not([style*="display: none"])');
}

// Tell Gradio that a value set from javascript changed (it listens for 'input').
function updateInput(target) {
    const event = new Event("input", {bubbles: true});
    Object.defineProperty(event, "target", {value: target});
    target.dispatchEvent(event);
}

// Whether an element is shown: neither it nor any parent has display: none.
function uiElementIsVisible(el) {
    let node = el;
    while (node && node !== document && node.nodeType === Node.ELEMENT_NODE) {
        if (getComputedStyle(node).display === 'none') return false;
        node = node.parentNode instanceof ShadowRoot ? node.parentNode.host : node.parentNode;
    }
    return !!node;
}

function uiElementInSight(el) {
    const rect = el.getBoundingClientRect();
    return rect.bottom > 0 && rect.top < window.innerHeight;
}

function args_to_array(args) {
    return Array.from(args);
}

function randomId() {
    const part = function() { return Math.random().toString(36).slice(2, 7); };
    return "task(" + part() + part() + part() + ")";
}

// Select a tab by its elem_id (Gradio names its button `<elem_id>-button`); false when it is not on the page.
function sdSelectTab(elemId) {
    const button = gradioApp().getElementById(elemId + '-button');
    if (!button) return false;
    if (button.getAttribute('aria-selected') !== 'true') button.click();
    return true;
}

// Index of the selected tab in the Tabs with this elem_id (A1111's get_tab_index).
function get_tab_index(tabId) {
    const tabs = gradioApp().getElementById(tabId);
    if (!tabs) return 0;
    const buttons = Array.from(tabs.querySelectorAll('button[role="tab"]'))
        .filter(function(b) { return b.closest('.tabs') === tabs; });
    const index = buttons.findIndex(function(b) { return b.getAttribute('aria-selected') === 'true'; });
    return index < 0 ? 0 : index;
}

function switch_to_txt2img() {
    sdSelectTab('tab_txt2img');
    return Array.from(arguments);
}

function switch_to_img2img_tab(no) {
    sdSelectTab('tab_img2img');
    const sub = ['img2img_img2img_tab', 'img2img_img2img_sketch_tab', 'img2img_inpaint_tab',
        'img2img_inpaint_sketch_tab', 'img2img_inpaint_upload_tab', 'img2img_batch_tab'][no || 0];
    if (sub) setTimeout(function() { sdSelectTab(sub); }, 0);
}

function switch_to_img2img() { switch_to_img2img_tab(0); return Array.from(arguments); }
function switch_to_sketch() { switch_to_img2img_tab(1); return Array.from(arguments); }
function switch_to_inpaint() { switch_to_img2img_tab(2); return Array.from(arguments); }
function switch_to_inpaint_sketch() { switch_to_img2img_tab(3); return Array.from(arguments); }
function switch_to_extras() { sdSelectTab('tab_extras'); return Array.from(arguments); }

// A1111's _js for its Generate buttons: the first argument becomes a fresh task id, the rest pass through.
function submit() {
    const res = Array.from(arguments);
    if (res.length > 0) res[0] = randomId();
    return res;
}

function submit_img2img() {
    const res = submit.apply(null, arguments);
    if (res.length > 1) res[1] = get_tab_index('mode_img2img');
    return res;
}

function submit_extras() {
    const res = submit.apply(null, arguments);
    if (res.length > 1) res[1] = get_tab_index('mode_extras');
    return res;
}

// requestProgress(id_task, progressbarContainer, gallery, atEnd, onProgress, inactivityTimeout): polls the
// server's progress (`internal/progress` where the server has it, else `sdapi/v1/progress`, which needs --api),
// shows a bar above progressbarContainer, calls onProgress(res) with A1111's fields (active, queued, completed,
// progress, eta, textinfo) and atEnd() when the job is over, or at once when no progress endpoint answers.
var sdProgressSource = null;

function sdProgressFetch(idTask, idLivePreview) {
    function internal() {
        return fetch('./internal/progress', {
            method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({id_task: idTask, id_live_preview: idLivePreview, live_preview: false}),
        }).then(function(r) {
            if (!r.ok) throw new Error(String(r.status));
            sdProgressSource = 'internal';
            return r.json();
        });
    }
    function sdapi() {
        return fetch('./sdapi/v1/progress?skip_current_image=true').then(function(r) {
            if (!r.ok) throw new Error(String(r.status));
            sdProgressSource = 'sdapi';
            return r.json();
        }).then(function(r) {
            const state = r.state || {};
            const active = !!(state.job_count > 0 || state.job);
            return {active: active, queued: false, completed: false, progress: r.progress || 0,
                eta: r.eta_relative || 0, textinfo: r.textinfo || null, live_preview: null, id_live_preview: -1};
        });
    }
    if (sdProgressSource === 'internal') return internal();
    if (sdProgressSource === 'sdapi') return sdapi();
    return internal().catch(sdapi);
}

function requestProgress(id_task, progressbarContainer, gallery, atEnd, onProgress, inactivityTimeout) {
    const timeout = inactivityTimeout === undefined ? 40 : inactivityTimeout;
    const started = Date.now();
    let wasActive = false;
    let finished = false;
    const parent = progressbarContainer && progressbarContainer.parentNode;
    const bar = document.createElement('div');
    bar.className = 'progressDiv';
    bar.style.display = opts.show_progressbar === false ? 'none' : 'block';
    const inner = document.createElement('div');
    inner.className = 'progress';
    bar.appendChild(inner);
    if (parent) parent.insertBefore(bar, progressbarContainer);

    function finish() {
        if (finished) return;
        finished = true;
        if (bar.parentNode) bar.parentNode.removeChild(bar);
        if (atEnd) {
            try { atEnd(); } catch (e) { console.error("error in requestProgress atEnd", e); }
        }
    }

    function poll(idLivePreview) {
        sdProgressFetch(id_task, idLivePreview).then(function(res) {
            if (finished) return;
            if (res.completed) return finish();
            const percent = (res.progress || 0) * 100;
            inner.style.width = percent + '%';
            inner.textContent = percent > 0 ? percent.toFixed(0) + '%' : '';
            if (res.active) wasActive = true;
            if (onProgress) {
                try { onProgress(res); } catch (e) { console.error("error in requestProgress onProgress", e); }
            }
            const elapsed = (Date.now() - started) / 1000;
            if ((!res.active && wasActive) || (elapsed > timeout && !res.queued && !res.active)) return finish();
            setTimeout(function() { poll(res.id_live_preview); }, opts.live_preview_refresh_period || 500);
        }).catch(function(e) {
            console.warn("requestProgress: no progress endpoint answered", e);
            finish();
        });
    }
    poll(0);
}

// Settings applied in the Settings tab: refresh `opts` where the options endpoint exists and tell extensions.
document.addEventListener('click', function(e) {
    const button = e.target && e.target.closest ? e.target.closest('#settings_submit') : null;
    if (!button) return;
    setTimeout(function() {
        fetch('./sdapi/v1/options').then(function(r) { return r.ok ? r.json() : null; }).then(function(fresh) {
            if (fresh && typeof fresh === 'object') {
                Object.assign(opts, fresh);
                executeCallbacks(optionsChangedCallbacks);
            }
        }).catch(function() {});
    }, 1000);
}, true);

(function() {
    let afterTimer = null;
    let priming = false;

    function waitFor(selector, ms) {
        return new Promise(function(resolve) {
            const until = Date.now() + ms;
            (function check() {
                const found = gradioApp().querySelector(selector);
                if (found || Date.now() > until) return resolve(found);
                setTimeout(check, 25);
            })();
        });
    }

    // Build what A1111 has on the page from the start: the img2img tab and the extra-networks panels.
    async function prime() {
        const tabs = gradioApp().getElementById('tabs');
        const shown = get_uiCurrentTab();
        if (tabs) tabs.style.visibility = 'hidden';
        try {
            if (!gradioApp().getElementById('img2img_prompt') && sdSelectTab('tab_img2img')) {
                await waitFor('#img2img_prompt', 3000);
            }
            for (const name of ['txt2img', 'img2img']) {
                const panel = gradioApp().getElementById(name + '_extra_networks');
                const toggle = panel && panel.querySelector(':scope > button.label-wrap, button.label-wrap');
                if (toggle && !gradioApp().getElementById(name + '_extra_refresh')) {
                    toggle.click();
                    await waitFor('#' + name + '_extra_refresh', 2000);
                    toggle.click();
                }
            }
            if (shown && shown.getAttribute('aria-selected') !== 'true') shown.click();
        } catch (e) {
            console.error("preparing the page for extensions", e);
        } finally {
            if (tabs) tabs.style.visibility = '';
        }
    }

    async function loaded() {
        priming = true;
        if (sdExtensionScripts > 0) await prime();
        priming = false;
        sdPageLoaded = true;
        executeCallbacks(uiLoadedCallbacks);
        executeCallbacks(optionsAvailableCallbacks);
    }

    function checkTab() {
        if (priming) return;
        const tab = get_uiCurrentTab();
        if (tab && tab !== uiCurrentTab) {
            uiCurrentTab = tab;
            executeCallbacks(uiTabChangeCallbacks);
        }
    }

    function start() {
        let started = false;
        const observer = new MutationObserver(function(mutations) {
            if (!started && gradioApp().querySelector('#txt2img_prompt')) {
                started = true;
                loaded();
            }
            executeCallbacks(uiUpdateCallbacks, mutations);
            clearTimeout(afterTimer);
            afterTimer = setTimeout(function() { executeCallbacks(uiAfterUpdateCallbacks); }, 200);
            checkTab();
        });
        observer.observe(gradioApp(), {childList: true, subtree: true});
        // A tab built before is shown again without new elements: only its button's state changes.
        new MutationObserver(checkTab).observe(gradioApp(), {attributes: true, subtree: true,
            attributeFilter: ['aria-selected']});
    }
    if (document.readyState === 'loading') {
        document.addEventListener('DOMContentLoaded', start);
    } else {
        start();
    }
})();
