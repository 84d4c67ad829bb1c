// Inline SVG icons (drawn for omniphi on a 24-unit grid, stroked with currentColor).
const S = 'stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round" fill="none"';

const PATHS = {
  menu: '<path d="M4 7h16M4 12h16M4 17h16"/>',
  sidebar: '<rect x="3" y="4" width="18" height="16" rx="3"/><path d="M9.5 4v16"/>',
  edit: '<path d="M11 4.5H7a3 3 0 0 0-3 3v9.5a3 3 0 0 0 3 3h9.5a3 3 0 0 0 3-3V13"/><path d="M17.6 3.9a2 2 0 0 1 2.9 2.9L12.7 14.6 9 15.5l.9-3.7z"/>',
  pencil: '<path d="M4 20h4L19.2 8.8a2.8 2.8 0 0 0-4-4L4 16z"/><path d="M13.5 6.5l4 4"/>',
  trash: '<path d="M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4.5h6V7"/>',
  settings: '<path d="M4 6h8M16 6h4M4 12h2M10 12h10M4 18h10M18 18h2"/><circle cx="14" cy="6" r="2"/><circle cx="8" cy="12" r="2"/><circle cx="16" cy="18" r="2"/>',
  image: '<rect x="3" y="3" width="18" height="18" rx="3.5"/><circle cx="8.5" cy="8.5" r="1.6"/><path d="M21 15.5l-5.2-5.2L5.5 20.6"/>',
  "file-audio": '<path d="M14 3H7.5A2.5 2.5 0 0 0 5 5.5v13A2.5 2.5 0 0 0 7.5 21h9a2.5 2.5 0 0 0 2.5-2.5V8z"/><path d="M14 3v5h5"/><circle cx="10.5" cy="16" r="1.8"/><path d="M12.3 16v-5l2.7 1"/>',
  audio: '<path d="M3 10v4M7 7v10M11 4v16M15 8v8M19 11v2"/>',
  mic: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5.5 11a6.5 6.5 0 0 0 13 0M12 17.5V21"/>',
  "arrow-up": '<path d="M12 19V5M5.5 11.5 12 5l6.5 6.5"/>',
  "arrow-down": '<path d="M12 5v14M18.5 12.5 12 19l-6.5-6.5"/>',
  stop: '<rect x="6.5" y="6.5" width="11" height="11" rx="2" fill="currentColor" stroke="none"/>',
  copy: '<rect x="9" y="9" width="11.5" height="11.5" rx="2.5"/><path d="M15 5.5V5a2 2 0 0 0-2-2H5a2 2 0 0 0-2 2v8a2 2 0 0 0 2 2h.5"/>',
  check: '<path d="M5 12.5l4.5 4.5L19 7.5"/>',
  refresh: '<path d="M20 12a8 8 0 1 1-2.6-5.9"/><path d="M20 4v5h-5"/>',
  x: '<path d="M6.5 6.5l11 11M17.5 6.5l-11 11"/>',
  upload: '<path d="M12 15V4M7 8.5 12 4l5 4.5M4.5 15v2.5A2.5 2.5 0 0 0 7 20h10a2.5 2.5 0 0 0 2.5-2.5V15"/>',
  alert: '<circle cx="12" cy="12" r="9"/><path d="M12 7.5v5.5M12 16.5v.01"/>',
  info: '<circle cx="12" cy="12" r="9"/><path d="M12 11v5.5M12 7.5v.01"/>',
  logo: '<circle cx="12" cy="12" r="6.2" stroke-width="2.2"/><path d="M12 3.5v17" stroke-width="2.2"/>',
};

export function icon(name, cls = "") {
  const body = PATHS[name] || PATHS.info;
  return `<svg class="svg-ico ${cls}" viewBox="0 0 24 24" width="20" height="20" aria-hidden="true" focusable="false" ${S}>${body}</svg>`;
}

/** Fills every `<span class="ico" data-icon="NAME">` under root with its SVG. */
export function hydrateIcons(root = document) {
  for (const el of root.querySelectorAll(".ico[data-icon]")) {
    if (!el.firstElementChild) el.innerHTML = icon(el.dataset.icon);
  }
}
