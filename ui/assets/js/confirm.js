// An in-page confirmation dialog (a <dialog>, not window.confirm: it is
// styled like the page, reads well to screen readers, and a browser test
// can click it).

/**
 * confirmAction asks the user; resolves true when confirmed. opts: title,
 * body, confirm (button text), danger (red confirm button).
 */
export function confirmAction({ title, body, confirm, danger }) {
  const dlg = document.getElementById('confirm-dialog');
  const ok = document.getElementById('confirm-ok');
  const cancel = document.getElementById('confirm-cancel');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-body').textContent = body;
  ok.textContent = confirm || 'Confirm';
  ok.className = 'button ' + (danger ? 'button-danger' : 'button-primary');
  return new Promise((resolve) => {
    const done = (v) => {
      ok.removeEventListener('click', yes);
      cancel.removeEventListener('click', no);
      dlg.removeEventListener('cancel', no);
      if (dlg.open) dlg.close();
      resolve(v);
    };
    const yes = (e) => {
      e.preventDefault();
      done(true);
    };
    const no = (e) => {
      e.preventDefault();
      done(false);
    };
    ok.addEventListener('click', yes);
    cancel.addEventListener('click', no);
    dlg.addEventListener('cancel', no);
    dlg.showModal();
    cancel.focus();
  });
}
