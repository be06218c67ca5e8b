// The browser's id for the job queue (a reload or a second tab re-attaches to this browser's jobs), and A1111's
// right-click menu on Generate: "Generate forever" / "Cancel generate forever", plus appendContextMenuOption for
// extensions that add entries to it.
(function () {
  window.sdClientId = function () {
    let id = null;
    try { id = localStorage.getItem('sd_client_id'); } catch (e) { /* storage off: one id per page */ }
    if (!id || !/^[0-9a-f]{32}$/.test(id)) {
      const bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      id = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
      try { localStorage.setItem('sd_client_id', id); } catch (e) { /* kept for this page only */ }
    }
    return id;
  };

  const entries = [];  // [selector, name, fn]
  window.appendContextMenuOption = function (selector, name, fn) {
    const entry = [selector, name, fn];
    entries.push(entry);
    return entry;
  };
  window.removeContextMenuOption = function (entry) {
    const i = entries.indexOf(entry);
    if (i >= 0) entries.splice(i, 1);
  };

  function setForever(tab, on) {
    const box = document.querySelector('#' + tab + '_generate_forever input[type=checkbox]');
    if (box && box.checked !== on) box.click();
  }
  for (const tab of ['txt2img', 'img2img']) {
    appendContextMenuOption('#' + tab + '_generate', 'Generate forever', () => {
      setForever(tab, true);
      setTimeout(() => document.getElementById(tab + '_generate').click(), 100);
    });
    appendContextMenuOption('#' + tab + '_generate', 'Cancel generate forever', () => setForever(tab, false));
  }

  function closeMenu() {
    const old = document.getElementById('sd-context-menu');
    if (old) old.remove();
  }
  document.addEventListener('click', closeMenu);
  document.addEventListener('contextmenu', (e) => {
    closeMenu();
    const mine = entries.filter(([selector]) => e.target.closest && e.target.closest(selector));
    if (!mine.length) return;
    e.preventDefault();
    const menu = document.createElement('ul');
    menu.id = 'sd-context-menu';
    menu.className = 'sd-context-menu';
    menu.style.left = e.pageX + 'px';
    menu.style.top = e.pageY + 'px';
    for (const [, name, fn] of mine) {
      const item = document.createElement('li');
      item.textContent = name;
      item.addEventListener('click', (ev) => { ev.stopPropagation(); closeMenu(); fn(); });
      menu.appendChild(item);
    }
    document.body.appendChild(menu);
  });
})();
