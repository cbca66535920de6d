// Drag-and-drop and the progress bar of the upload form.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("artifact-input");
  const text = document.getElementById("dropzone-text");
  const progress = document.getElementById("upload-progress");

  const show = () => { if (input.files.length) text.textContent = `${input.files[0].name} (${input.files[0].size} bytes)`; };
  input.addEventListener("change", show);
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("dragover")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      show();
    }
  });

  form.addEventListener("htmx:beforeRequest", () => { progress.hidden = false; progress.value = 0; });
  form.addEventListener("htmx:xhr:progress", (event) => {
    if (event.detail.lengthComputable) progress.value = (event.detail.loaded / event.detail.total) * 100;
  });
  form.addEventListener("htmx:afterRequest", (event) => {
    progress.value = 100;
    if (event.detail.successful) { form.reset(); text.textContent = "Drop another file here, or click to choose one."; }
  });
});
