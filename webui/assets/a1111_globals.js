// Page-side names A1111 extension scripts rely on (A1111's script.js): gradioApp(), the onUiLoaded/onUiUpdate
// callback registries, get_uiCurrentTab(), and the `opts` dictionary of settings.
var opts = __OPTS__;
var uiUpdateCallbacks = [];
var uiAfterUpdateCallbacks = [];
var uiLoadedCallbacks = [];
var uiTabChangeCallbacks = [];
var optionsChangedCallbacks = [];
var optionsAvailableCallbacks = [];

function gradioApp() {
    const elems = document.getElementsByTagName('gradio-app');
    const elem = elems.length === 0 ? document : elems[0];
    if (elem !== document) {
        elem.getElementById = function(id) { return document.getElementById(id); };
    }
    return elem.shadowRoot ? elem.shadowRoot : elem;
}

function onUiUpdate(callback) { uiUpdateCallbacks.push(callback); }
function onAfterUiUpdate(callback) { uiAfterUpdateCallbacks.push(callback); }
function onUiLoaded(callback) { uiLoadedCallbacks.push(callback); }
function onUiTabChange(callback) { uiTabChangeCallbacks.push(callback); }
function onOptionsChanged(callback) { optionsChangedCallbacks.push(callback); }
function onOptionsAvailable(callback) { optionsAvailableCallbacks.push(callback); }

function executeCallbacks(queue, arg) {
    for (const callback of queue) {
        try { callback(arg); } catch (e) { console.error("error running callback", callback, ":", e); }
    }
}

function get_uiCurrentTab() {
    return gradioApp().querySelector('#tabs > .tab-nav > button.selected, #tabs button[role="tab"][aria-selected="true"]');
}

function get_uiCurrentTabContent() {
    return gradioApp().querySelector('#tabs > .tabitem[id^=tab_]:not([style*="display: none"])');
}

(function() {
    let loaded = false;
    let currentTab = null;
    let afterTimer = null;
    function start() {
        const observer = new MutationObserver(function(mutations) {
            if (!loaded && gradioApp().querySelector('#txt2img_prompt')) {
                loaded = true;
                executeCallbacks(uiLoadedCallbacks);
                executeCallbacks(optionsAvailableCallbacks);
            }
            executeCallbacks(uiUpdateCallbacks, mutations);
            clearTimeout(afterTimer);
            afterTimer = setTimeout(function() { executeCallbacks(uiAfterUpdateCallbacks); }, 200);
            const tab = get_uiCurrentTab();
            if (tab && tab !== currentTab) {
                currentTab = tab;
                executeCallbacks(uiTabChangeCallbacks);
            }
        });
        observer.observe(gradioApp(), {childList: true, subtree: true});
    }
    if (document.readyState === 'loading') {
        document.addEventListener('DOMContentLoaded', start);
    } else {
        start();
    }
})();
