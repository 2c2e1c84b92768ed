/* The doctor's workstation: scanner-friendly search input, catalogue filter, and study
 * thumbnails fetched with the page's short-lived DICOMweb token (the thumbnail URLs need a
 * bearer token, which an <img src> cannot send). No framework. */
(function () {
  "use strict";

  // A scanner types fast and ends with Enter (the form submits); control characters and
  // spaces it adds are dropped as they arrive, so what is shown is what is searched.
  var search = document.querySelector("form[data-scanner] input[type=search]");
  if (search) {
    search.addEventListener("input", function () {
      var cleaned = search.value.replace(/[\u0000-\u001f\u007f-\u009f\s]+/g, "");
      if (cleaned !== search.value) search.value = cleaned;
    });
    search.select();
  }

  // Filter the catalogue items by name or code as the doctor types.
  var filter = document.getElementById("item-filter");
  var list = document.getElementById("catalogue-items");
  if (filter && list) {
    filter.addEventListener("input", function () {
      var wanted = filter.value.trim().toLowerCase();
      list.querySelectorAll("li").forEach(function (item) {
        item.hidden = wanted !== "" && item.dataset.search.toLowerCase().indexOf(wanted) < 0;
      });
    });
    filter.addEventListener("keydown", function (event) {
      if (event.key === "Enter") event.preventDefault(); // Enter filters, it does not submit
    });
  }

  // Thumbnails: fetched with the bearer token the page was given.
  var meta = document.querySelector("meta[name=dicomweb-token]");
  var token = meta ? meta.content : "";
  document.querySelectorAll("img[data-thumbnail]").forEach(function (img) {
    if (!token) return;
    fetch(img.dataset.thumbnail, { headers: { Authorization: "Bearer " + token, Accept: "image/jpeg, image/png" } })
      .then(function (response) { return response.ok ? response.blob() : null; })
      .then(function (blob) { if (blob) img.src = URL.createObjectURL(blob); })
      .catch(function () { /* no thumbnail: the study is still listed */ });
  });
})();
