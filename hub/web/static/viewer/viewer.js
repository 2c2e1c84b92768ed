/* Yijian Hub DICOM viewer: cornerstone-core + cornerstone-tools on the hub's DICOMweb.
 *
 * The page (templates/viewer.html) gives the study UID, the DICOMweb root and a short-lived
 * bearer token as data attributes of <div class="viewer">, and its texts as JSON. This file:
 *   - lists the study's series (QIDO-RS) with thumbnails, and a series' instances ordered by
 *     InstanceNumber, each frame one image of the stack (multi-frame instances scroll by frame);
 *   - loads images through a cornerstone image loader ("yijian:" image ids): native pixel data
 *     from WADO-RS /frames/N (multipart/related, any transfer syntax) becomes a cornerstone
 *     image of true stored values with the rescale slope/intercept and the stored window, so
 *     window/level is real; compressed frames the browser cannot decode (and unusual pixel
 *     formats) fall back to the server's /frames/N/rendered PNG, and the overlay says so;
 *   - wires the tools: window/level (left drag), zoom (right drag, pinch), pan (middle drag,
 *     two fingers), stack scroll (wheel, ↑/↓), presets, invert, reset; prefetches neighbours;
 *   - exposes its state on window.yijianViewer and sets data-ready="true" on the viewport
 *     once the first image has rendered (the browser tests wait for both).
 */
(function () {
  "use strict";

  var root = document.getElementById("yijian-viewer");
  if (!root || typeof cornerstone === "undefined" || typeof cornerstoneTools === "undefined") {
    return;
  }
  var labels = JSON.parse(document.getElementById("yijian-viewer-labels").textContent);
  var base = root.dataset.dicomweb;
  var token = root.dataset.token;
  var studyUid = root.dataset.studyUid;
  var element = root.querySelector(".viewer-viewport");
  var overlay = {};
  root.querySelectorAll("[data-overlay]").forEach(function (node) {
    overlay[node.dataset.overlay] = node;
  });

  var NATIVE_SYNTAXES = [
    "1.2.840.10008.1.2", // Implicit VR Little Endian
    "1.2.840.10008.1.2.1", // Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99", // Deflated Explicit VR Little Endian (frames served inflated)
    "1.2.840.10008.1.2.2", // Explicit VR Big Endian (frames served little endian)
  ];
  var FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*';
  var PREFETCH = [1, -1, 2, -2, 3, -3, 4, 5];

  // State for people (the overlay) and for the browser tests.
  var state = {
    ready: false,
    studyUid: studyUid,
    seriesUid: null,
    series: [],
    index: 0,
    count: 0,
    frame: 1,
    voi: { windowCenter: null, windowWidth: null },
    scale: 1,
    translation: { x: 0, y: 0 },
    invert: false,
    tool: "Wwwc",
    renderedFallback: false,
    thumbnailsLoaded: 0,
    imagesLoaded: 0,
    error: null,
  };
  window.yijianViewer = state;

  // -- DICOMweb ------------------------------------------------------------------------------

  function request(path, accept) {
    return fetch(base + path, {
      headers: { Authorization: "Bearer " + token, Accept: accept },
      credentials: "same-origin",
    }).then(function (response) {
      if (!response.ok) {
        var error = new Error(response.status + " " + response.statusText + " " + path);
        error.status = response.status;
        throw error;
      }
      return response;
    });
  }

  function json(path) {
    return request(path, "application/dicom+json").then(function (response) {
      return response.status === 204 ? [] : response.json();
    });
  }

  /** Every result of a QIDO query, page by page (the hub answers at most 1000 a page). */
  function qidoAll(path) {
    var results = [];
    var separator = path.indexOf("?") < 0 ? "?" : "&";
    function page(offset) {
      return json(path + separator + "limit=1000&offset=" + offset).then(function (items) {
        results = results.concat(items);
        return items.length === 1000 ? page(offset + 1000) : results;
      });
    }
    return page(0);
  }

  // DICOM JSON (PS3.18 F.2) attribute values.
  function value(item, tag) {
    var element = item && item[tag];
    return element && element.Value && element.Value.length ? element.Value[0] : undefined;
  }
  function values(item, tag) {
    var element = item && item[tag];
    return element && element.Value ? element.Value : [];
  }
  function number(item, tag, fallback) {
    var found = Number(value(item, tag));
    return Number.isFinite(found) ? found : fallback;
  }
  /** A Person Name as people write it: characters (张三) first, else the Latin form. */
  function personName(item, tag) {
    var name = value(item, tag);
    if (!name) return "";
    if (name.Ideographic) return name.Ideographic.replace(/\^/g, "");
    return (name.Alphabetic || "").replace(/\^+/g, " ").trim();
  }

  // -- multipart/related ---------------------------------------------------------------------

  function indexOfBytes(haystack, needle, from) {
    var first = needle[0];
    var last = haystack.length - needle.length;
    for (var i = from; i <= last; i++) {
      if (haystack[i] !== first) continue;
      var j = 1;
      while (j < needle.length && haystack[i + j] === needle[j]) j++;
      if (j === needle.length) return i;
    }
    return -1;
  }

  /** The first part of a multipart/related body: {contentType, body: Uint8Array}. */
  function firstPart(buffer, contentType) {
    var found = /boundary="?([^";]+)"?/i.exec(contentType || "");
    if (!found) throw new Error("multipart answer without a boundary");
    var bytes = new Uint8Array(buffer);
    var encoder = new TextEncoder();
    var delimiter = encoder.encode("--" + found[1]);
    var start = indexOfBytes(bytes, delimiter, 0);
    if (start < 0) throw new Error("multipart answer without its boundary");
    var headerEnd = indexOfBytes(bytes, encoder.encode("\r\n\r\n"), start);
    if (headerEnd < 0) throw new Error("multipart part without headers");
    var headers = new TextDecoder().decode(bytes.subarray(start + delimiter.length, headerEnd));
    var bodyStart = headerEnd + 4;
    var end = indexOfBytes(bytes, encoder.encode("\r\n--" + found[1]), bodyStart);
    if (end < 0) throw new Error("multipart part is not closed");
    var type = /content-type:\s*([^\r\n]+)/i.exec(headers);
    return { contentType: type ? type[1].trim() : "", body: bytes.subarray(bodyStart, end) };
  }

  function transferSyntaxOf(contentType) {
    var found = /transfer-syntax\s*=\s*"?([0-9.]+)"?/i.exec(contentType);
    return found ? found[1] : null;
  }

  // -- series and instances ------------------------------------------------------------------

  var instancesByImageId = {};

  function studyPath(seriesUid) {
    var path = "/studies/" + encodeURIComponent(studyUid);
    return seriesUid ? path + "/series/" + encodeURIComponent(seriesUid) : path;
  }

  function loadSeriesList() {
    return qidoAll(studyPath() + "/series").then(function (items) {
      var list = items.map(function (item) {
        return {
          uid: value(item, "0020000E"),
          number: number(item, "00200011", 0),
          modality: value(item, "00080060") || "",
          description: value(item, "0008103E") || "",
          instances: number(item, "00201209", 0),
          imageIds: null,
        };
      });
      list.sort(function (a, b) {
        return a.number - b.number || (a.uid < b.uid ? -1 : 1);
      });
      return list;
    });
  }

  /** The series' image instances (QIDO for the list and transfer syntax, WADO-RS metadata
   * for the pixel attributes), ordered by InstanceNumber, and one image id per frame. */
  function loadInstances(series) {
    if (series.imageIds) return Promise.resolve(series.imageIds);
    var path = studyPath(series.uid);
    return Promise.all([
      qidoAll(path + "/instances?includefield=00083002&includefield=00280008"),
      json(path + "/metadata"),
    ]).then(function (answers) {
      var syntaxes = {};
      answers[0].forEach(function (item) {
        syntaxes[value(item, "00080018")] = value(item, "00083002");
      });
      var instances = answers[1]
        .map(function (item) {
          var uid = value(item, "00080018");
          return {
            uid: uid,
            seriesUid: series.uid,
            number: number(item, "00200013", 0),
            syntax: syntaxes[uid] || value(item, "00020010") || null,
            frames: Math.max(1, number(item, "00280008", 1)),
            rows: number(item, "00280010", 0),
            columns: number(item, "00280011", 0),
            bitsAllocated: number(item, "00280100", 16),
            bitsStored: number(item, "00280101", number(item, "00280100", 16)),
            pixelRepresentation: number(item, "00280103", 0),
            samplesPerPixel: number(item, "00280002", 1),
            planarConfiguration: number(item, "00280006", 0),
            photometric: String(value(item, "00280004") || "MONOCHROME2").toUpperCase(),
            slope: number(item, "00281053", 1),
            intercept: number(item, "00281052", 0),
            windowCenter: number(item, "00281050", null),
            windowWidth: number(item, "00281051", null),
            spacing: values(item, "00280030").length
              ? values(item, "00280030")
              : values(item, "00181164"),
          };
        })
        .filter(function (instance) {
          return instance.rows > 0 && instance.columns > 0; // images only (not SR, KO...)
        });
      instances.sort(function (a, b) {
        return a.number - b.number || (a.uid < b.uid ? -1 : 1);
      });
      var imageIds = [];
      instances.forEach(function (instance) {
        for (var frame = 1; frame <= instance.frames; frame++) {
          var imageId = "yijian:" + series.uid + "/" + instance.uid + "/" + frame;
          instancesByImageId[imageId] = { instance: instance, frame: frame };
          imageIds.push(imageId);
        }
      });
      series.imageIds = imageIds;
      return imageIds;
    });
  }

  // -- the image loader ----------------------------------------------------------------------

  function instancePath(instance) {
    return studyPath(instance.seriesUid) + "/instances/" + encodeURIComponent(instance.uid);
  }

  function decodable(instance) {
    var mono = instance.photometric === "MONOCHROME1" || instance.photometric === "MONOCHROME2";
    var color =
      instance.samplesPerPixel === 3 &&
      (instance.photometric === "RGB" || instance.photometric === "YBR_FULL");
    return (
      ((mono && instance.samplesPerPixel === 1) || color) &&
      [8, 16, 32].indexOf(instance.bitsAllocated) >= 0 &&
      !(color && instance.bitsAllocated !== 8)
    );
  }

  function loadImage(imageId) {
    var found = instancesByImageId[imageId];
    if (!found) return Promise.reject(new Error("unknown image " + imageId));
    var instance = found.instance;
    var nativeKnown = instance.syntax ? NATIVE_SYNTAXES.indexOf(instance.syntax) >= 0 : true;
    if (!nativeKnown || !decodable(instance)) return loadRendered(imageId, instance, found.frame);
    return request(instancePath(instance) + "/frames/" + found.frame, FRAME_ACCEPT)
      .then(function (response) {
        var contentType = response.headers.get("Content-Type");
        return response.arrayBuffer().then(function (buffer) {
          return firstPart(buffer, contentType);
        });
      })
      .then(function (part) {
        var syntax = transferSyntaxOf(part.contentType);
        var native =
          part.contentType.toLowerCase().indexOf("application/octet-stream") === 0 &&
          (syntax === null || NATIVE_SYNTAXES.indexOf(syntax) >= 0);
        if (!native) return loadRendered(imageId, instance, found.frame);
        return nativeImage(imageId, instance, part.body);
      })
      .catch(function (error) {
        if (error.status === 406) return loadRendered(imageId, instance, found.frame);
        throw error;
      });
  }

  /** A cornerstone image of the frame's stored values (little endian, as the hub sends). */
  function nativeImage(imageId, instance, bytes) {
    var pixelCount = instance.rows * instance.columns;
    var copy = bytes.slice().buffer; // aligned, and owned by the image
    if (instance.samplesPerPixel === 3) return colorImage(imageId, instance, new Uint8Array(copy));
    var pixels;
    if (instance.bitsAllocated === 8) {
      pixels = instance.pixelRepresentation ? new Int8Array(copy) : new Uint8Array(copy);
    } else if (instance.bitsAllocated === 16) {
      pixels = instance.pixelRepresentation ? new Int16Array(copy) : new Uint16Array(copy);
    } else {
      pixels = instance.pixelRepresentation ? new Int32Array(copy) : new Uint32Array(copy);
    }
    if (pixels.length < pixelCount) throw new Error("frame shorter than its rows × columns");
    pixels = pixels.subarray(0, pixelCount);
    var stored = instance.bitsStored;
    if (stored > 0 && stored < instance.bitsAllocated && instance.bitsAllocated < 32) {
      // Bits above Bits Stored carry nothing (or overlays): mask, and sign-extend if signed.
      var mask = (1 << stored) - 1;
      var sign = 1 << (stored - 1);
      for (var k = 0; k < pixelCount; k++) {
        var v = pixels[k] & mask;
        pixels[k] = instance.pixelRepresentation && v & sign ? v - (mask + 1) : v;
      }
    }
    var min = Infinity;
    var max = -Infinity;
    for (var i = 0; i < pixelCount; i++) {
      var p = pixels[i];
      if (p < min) min = p;
      if (p > max) max = p;
    }
    var center = instance.windowCenter;
    var width = instance.windowWidth;
    if (center === null || width === null || width <= 0) {
      var low = min * instance.slope + instance.intercept;
      var high = max * instance.slope + instance.intercept;
      width = Math.max(1, high - low);
      center = low + width / 2;
    }
    var spacing = instance.spacing;
    return {
      imageId: imageId,
      minPixelValue: min,
      maxPixelValue: max,
      slope: instance.slope,
      intercept: instance.intercept,
      windowCenter: center,
      windowWidth: width,
      getPixelData: function () {
        return pixels;
      },
      rows: instance.rows,
      columns: instance.columns,
      height: instance.rows,
      width: instance.columns,
      color: false,
      rgba: false,
      invert: instance.photometric === "MONOCHROME1",
      rowPixelSpacing: spacing.length ? Number(spacing[0]) : undefined,
      columnPixelSpacing: spacing.length > 1 ? Number(spacing[1]) : undefined,
      sizeInBytes: pixels.byteLength,
      yijianSource: "native",
    };
  }

  function ybrToRgb(y, cb, cr) {
    return [
      y + 1.402 * (cr - 128),
      y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
      y + 1.772 * (cb - 128),
    ];
  }

  /** An RGB (or YBR_FULL) 8-bit frame as the RGBA pixel data cornerstone draws. */
  function colorImage(imageId, instance, bytes) {
    var count = instance.rows * instance.columns;
    if (bytes.length < count * 3) throw new Error("frame shorter than its rows × columns");
    var rgba = new Uint8ClampedArray(count * 4);
    var planar = instance.planarConfiguration === 1;
    var ybr = instance.photometric === "YBR_FULL";
    for (var i = 0; i < count; i++) {
      var r = planar ? bytes[i] : bytes[3 * i];
      var g = planar ? bytes[count + i] : bytes[3 * i + 1];
      var b = planar ? bytes[2 * count + i] : bytes[3 * i + 2];
      if (ybr) {
        var rgb = ybrToRgb(r, g, b);
        r = rgb[0];
        g = rgb[1];
        b = rgb[2];
      }
      rgba[4 * i] = r;
      rgba[4 * i + 1] = g;
      rgba[4 * i + 2] = b;
      rgba[4 * i + 3] = 255;
    }
    return rgbaImage(imageId, instance, rgba, "native");
  }

  function rgbaImage(imageId, instance, rgba, source) {
    var spacing = instance.spacing;
    return {
      imageId: imageId,
      minPixelValue: 0,
      maxPixelValue: 255,
      slope: 1,
      intercept: 0,
      windowCenter: 128,
      windowWidth: 255,
      getPixelData: function () {
        return rgba;
      },
      rows: instance.rows,
      columns: instance.columns,
      height: instance.rows,
      width: instance.columns,
      color: true,
      rgba: false,
      invert: false,
      rowPixelSpacing: spacing.length ? Number(spacing[0]) : undefined,
      columnPixelSpacing: spacing.length > 1 ? Number(spacing[1]) : undefined,
      sizeInBytes: rgba.byteLength,
      yijianSource: source,
    };
  }

  /** The server's rendering of the frame (PNG), for what the browser cannot decode. Grey
   * images stay grey (one channel), so window/level still works on the rendered values. */
  function loadRendered(imageId, instance, frame) {
    return request(instancePath(instance) + "/frames/" + frame + "/rendered", "image/png")
      .then(function (response) {
        return response.blob();
      })
      .then(function (blob) {
        return createImageBitmap(blob);
      })
      .then(function (bitmap) {
        var canvas = document.createElement("canvas");
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
        var context = canvas.getContext("2d");
        context.drawImage(bitmap, 0, 0);
        var data = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
        var shape = {
          rows: bitmap.height,
          columns: bitmap.width,
          spacing: instance.spacing,
        };
        if (instance.samplesPerPixel === 3 || instance.photometric.indexOf("PALETTE") === 0) {
          return rgbaImage(imageId, shape, data, "rendered");
        }
        var count = bitmap.width * bitmap.height;
        var grey = new Uint8Array(count);
        for (var i = 0; i < count; i++) grey[i] = data[4 * i];
        return {
          imageId: imageId,
          minPixelValue: 0,
          maxPixelValue: 255,
          slope: 1,
          intercept: 0,
          windowCenter: 128,
          windowWidth: 256,
          getPixelData: function () {
            return grey;
          },
          rows: shape.rows,
          columns: shape.columns,
          height: shape.rows,
          width: shape.columns,
          color: false,
          rgba: false,
          invert: false, // the server has applied MONOCHROME1 already
          rowPixelSpacing: shape.spacing.length ? Number(shape.spacing[0]) : undefined,
          columnPixelSpacing: shape.spacing.length > 1 ? Number(shape.spacing[1]) : undefined,
          sizeInBytes: grey.byteLength,
          yijianSource: "rendered",
        };
      });
  }

  cornerstone.registerImageLoader("yijian", function (imageId) {
    var promise = loadImage(imageId).then(function (image) {
      state.imagesLoaded += 1;
      return image;
    });
    return { promise: promise };
  });
  cornerstone.imageCache.setMaximumSizeBytes(768 * 1024 * 1024);

  // -- tools -----------------------------------------------------------------------------

  cornerstoneTools.external.cornerstone = cornerstone;
  cornerstoneTools.external.cornerstoneMath = cornerstoneMath;
  cornerstoneTools.external.Hammer = Hammer;
  cornerstoneTools.init({ showSVGCursors: false, mouseEnabled: true, touchEnabled: true });
  cornerstone.enable(element);

  var scrollBy = cornerstoneTools.import("util/scroll");
  var scrollToIndex = cornerstoneTools.import("util/scrollToIndex");

  [
    cornerstoneTools.WwwcTool,
    cornerstoneTools.ZoomTool,
    cornerstoneTools.PanTool,
    cornerstoneTools.StackScrollTool,
    cornerstoneTools.StackScrollMouseWheelTool,
    cornerstoneTools.ZoomTouchPinchTool,
    cornerstoneTools.PanMultiTouchTool,
  ].forEach(function (Tool) {
    cornerstoneTools.addToolForElement(element, Tool);
  });
  // Fixed bindings: right drag zooms, middle drag pans, the wheel scrolls; pinch and two
  // fingers zoom and pan. The left button (and one finger) is the chosen primary tool.
  cornerstoneTools.setToolActiveForElement(element, "Zoom", { mouseButtonMask: 2 });
  cornerstoneTools.setToolActiveForElement(element, "Pan", { mouseButtonMask: 4 });
  cornerstoneTools.setToolActiveForElement(element, "StackScrollMouseWheel", {});
  cornerstoneTools.setToolActiveForElement(element, "ZoomTouchPinch", {});
  cornerstoneTools.setToolActiveForElement(element, "PanMultiTouch", {});

  var toolButtons = root.querySelectorAll("[data-tool]");

  function choosePrimaryTool(name) {
    // Keep right = zoom and middle = pan whatever the left button does.
    if (state.tool === "Zoom" || state.tool === "Pan") {
      cornerstoneTools.setToolActiveForElement(element, state.tool, {
        mouseButtonMask: state.tool === "Zoom" ? 2 : 4,
      });
    }
    var masks = { Zoom: [1, 2], Pan: [1, 4] };
    cornerstoneTools.setToolActiveForElement(element, name, {
      mouseButtonMask: masks[name] || [1],
      isTouchActive: true,
    });
    state.tool = name;
    toolButtons.forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.dataset.tool === name));
    });
  }
  choosePrimaryTool("Wwwc");

  function viewport() {
    return cornerstone.getViewport(element);
  }

  function applyPreset(center, width) {
    var current = viewport();
    if (!current) return;
    current.voi.windowCenter = center;
    current.voi.windowWidth = width;
    cornerstone.setViewport(element, current);
  }

  function toggleInvert() {
    var current = viewport();
    if (!current) return;
    current.invert = !current.invert;
    cornerstone.setViewport(element, current);
  }

  function reset() {
    if (state.ready) cornerstone.reset(element);
  }

  function zoomBy(factor) {
    var current = viewport();
    if (!current) return;
    current.scale = Math.min(20, Math.max(0.05, current.scale * factor));
    cornerstone.setViewport(element, current);
  }

  function scroll(delta) {
    if (state.ready && state.count > 1) scrollBy(element, delta);
  }

  toolButtons.forEach(function (button) {
    button.addEventListener("click", function () {
      choosePrimaryTool(button.dataset.tool);
    });
  });
  var presetButtons = root.querySelectorAll("[data-preset]");
  presetButtons.forEach(function (button) {
    button.addEventListener("click", function () {
      applyPreset(Number(button.dataset.center), Number(button.dataset.width));
    });
  });
  root.querySelector('[data-action="invert"]').addEventListener("click", toggleInvert);
  root.querySelector('[data-action="reset"]').addEventListener("click", reset);
  element.addEventListener("contextmenu", function (event) {
    event.preventDefault();
  });

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    // Only while the viewer (or nothing in particular) has the focus: other widgets of a
    // page that embeds it keep their keys.
    if (target !== document.body && !root.contains(target)) return;
    var handled = true;
    switch (event.key) {
      case "ArrowUp":
      case "ArrowLeft":
        scroll(-1);
        break;
      case "ArrowDown":
      case "ArrowRight":
        scroll(1);
        break;
      case "PageUp":
        scroll(-10);
        break;
      case "PageDown":
        scroll(10);
        break;
      case "Home":
        if (state.ready) scrollToIndex(element, 0);
        break;
      case "End":
        if (state.ready) scrollToIndex(element, state.count - 1);
        break;
      case "r":
      case "R":
        reset();
        break;
      case "i":
      case "I":
        toggleInvert();
        break;
      case "+":
      case "=":
        zoomBy(1.25);
        break;
      case "-":
        zoomBy(0.8);
        break;
      default:
        if (/^[1-9]$/.test(event.key) && presetButtons[Number(event.key) - 1]) {
          presetButtons[Number(event.key) - 1].click();
        } else {
          handled = false;
        }
    }
    if (handled) event.preventDefault();
  });

  window.addEventListener("resize", function () {
    cornerstone.resize(element, false);
  });

  // -- overlay and state ---------------------------------------------------------------------

  var studyCaption = "";

  function currentSeries() {
    return state.series.find(function (series) {
      return series.uid === state.seriesUid;
    });
  }

  function round(number) {
    return Math.round(number * 10) / 10;
  }

  function updateOverlay() {
    var series = currentSeries();
    var found = instancesByImageId[series && series.imageIds ? series.imageIds[state.index] : ""];
    var description = series
      ? [series.modality, series.number ? "S" + series.number : "", series.description]
          .filter(Boolean)
          .join(" ")
      : "";
    overlay.series.textContent = [studyCaption, description].filter(Boolean).join("\n");
    var text = labels.image + " " + (state.index + 1) + " / " + state.count;
    if (found && found.instance.frames > 1) {
      text += "\n" + labels.frame + " " + found.frame + " / " + found.instance.frames;
    }
    overlay.image.textContent = text;
    overlay.voi.textContent =
      state.voi.windowWidth === null
        ? ""
        : "W " + round(state.voi.windowWidth) + "  L " + round(state.voi.windowCenter);
    overlay.zoom.textContent = labels.zoom + " " + Math.round(state.scale * 100) + "%";
    overlay.notice.hidden = !state.renderedFallback;
    overlay.notice.textContent = state.renderedFallback ? labels.rendered_fallback : "";
  }

  function showStatus(text, isError) {
    overlay.status.textContent = text || "";
    overlay.status.hidden = !text;
    overlay.status.classList.toggle("viewer-error", Boolean(isError));
  }

  function fail(error) {
    state.error = String((error && error.message) || error);
    var status = error && error.status;
    var reason =
      status === 401 ? labels.unauthorized : status === 403 || status === 404
        ? labels.not_visible
        : state.error;
    showStatus(labels.load_failed + (status ? " (" + status + ")" : "") + ": " + reason, true);
    if (window.console) console.error("yijian viewer:", error);
  }

  element.addEventListener(cornerstone.EVENTS.IMAGE_RENDERED, function (event) {
    var shown = event.detail.viewport;
    var image = event.detail.image;
    state.voi = { windowCenter: shown.voi.windowCenter, windowWidth: shown.voi.windowWidth };
    state.scale = shown.scale;
    state.translation = { x: shown.translation.x, y: shown.translation.y };
    state.invert = shown.invert;
    state.renderedFallback = Boolean(image && image.yijianSource === "rendered");
    updateOverlay();
    if (!state.ready) {
      state.ready = true;
      element.dataset.ready = "true";
      showStatus("");
    }
  });

  element.addEventListener(cornerstone.EVENTS.NEW_IMAGE, function (event) {
    var stack = cornerstoneTools.getToolState(element, "stack");
    if (stack && stack.data.length) state.index = stack.data[0].currentImageIdIndex;
    var found = instancesByImageId[event.detail.image.imageId];
    state.frame = found ? found.frame : 1;
    element.dataset.index = String(state.index);
    updateOverlay();
    prefetch(state.index);
  });

  function prefetch(index) {
    var series = currentSeries();
    if (!series || !series.imageIds) return;
    PREFETCH.forEach(function (delta) {
      var imageId = series.imageIds[index + delta];
      if (imageId) cornerstone.loadAndCacheImage(imageId).catch(function () {});
    });
  }

  // -- the series strip ----------------------------------------------------------------------

  var list = root.querySelector(".viewer-series-list");

  function thumbnail(series, img) {
    request(studyPath(series.uid) + "/thumbnail?viewport=128,128", "image/jpeg")
      .then(function (response) {
        return response.blob();
      })
      .then(function (blob) {
        img.onload = function () {
          state.thumbnailsLoaded += 1;
        };
        img.src = URL.createObjectURL(blob);
      })
      .catch(function () {
        img.alt = series.modality || "—";
      });
  }

  function buildStrip() {
    list.textContent = "";
    state.series.forEach(function (series) {
      var item = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "viewer-series-item";
      button.setAttribute("role", "option");
      button.setAttribute("aria-selected", "false");
      button.dataset.seriesUid = series.uid;
      var caption = [series.number ? "S" + series.number : "", series.modality, series.description]
        .filter(Boolean)
        .join(" ");
      button.title = caption + " (" + series.instances + ")";
      var img = document.createElement("img");
      img.alt = caption;
      img.decoding = "async";
      var text = document.createElement("span");
      text.className = "viewer-series-caption";
      text.textContent = caption + " · " + series.instances;
      button.appendChild(img);
      button.appendChild(text);
      button.addEventListener("click", function () {
        openSeries(series).catch(fail);
      });
      button.addEventListener("keydown", function (event) {
        var sibling = null;
        if (event.key === "ArrowDown" || event.key === "ArrowRight") {
          sibling = item.nextElementSibling;
        } else if (event.key === "ArrowUp" || event.key === "ArrowLeft") {
          sibling = item.previousElementSibling;
        }
        if (sibling) {
          event.preventDefault();
          event.stopPropagation();
          sibling.querySelector("button").focus();
        }
      });
      item.appendChild(button);
      list.appendChild(item);
      thumbnail(series, img);
    });
  }

  function openSeries(series) {
    showStatus(labels.loading);
    return loadInstances(series).then(function (imageIds) {
      if (!imageIds.length) {
        showStatus(labels.no_series);
        return;
      }
      state.seriesUid = series.uid;
      state.count = imageIds.length;
      state.index = 0;
      list.querySelectorAll(".viewer-series-item").forEach(function (button) {
        button.setAttribute("aria-selected", String(button.dataset.seriesUid === series.uid));
      });
      return cornerstone.loadAndCacheImage(imageIds[0]).then(function (image) {
        cornerstoneTools.clearToolState(element, "stack");
        cornerstoneTools.addStackStateManager(element, ["stack"]);
        cornerstoneTools.addToolState(element, "stack", {
          currentImageIdIndex: 0,
          imageIds: imageIds,
        });
        cornerstone.displayImage(
          element,
          image,
          cornerstone.getDefaultViewportForImage(element, image)
        );
        showStatus("");
        if (!state.ready) element.focus({ preventScroll: true });
      });
    });
  }

  // -- start ---------------------------------------------------------------------------------

  json("/studies?StudyInstanceUID=" + encodeURIComponent(studyUid))
    .then(function (studies) {
      var study = studies[0];
      if (study) {
        var date = String(value(study, "00080020") || "");
        if (date.length === 8) date = date.slice(0, 4) + "-" + date.slice(4, 6) + "-" + date.slice(6);
        studyCaption = [personName(study, "00100010"), value(study, "00100020"), date]
          .filter(Boolean)
          .join("  ");
      }
    })
    .catch(function () {})
    .then(loadSeriesList)
    .then(function (series) {
      state.series = series;
      buildStrip();
      if (!series.length) {
        showStatus(labels.no_series);
        return;
      }
      return openFirstImageSeries(series, 0);
    })
    .catch(fail);

  /** The first series with an image (a report or key-object series has none). */
  function openFirstImageSeries(series, at) {
    if (at >= series.length) {
      showStatus(labels.no_series);
      return undefined;
    }
    return loadInstances(series[at]).then(function (imageIds) {
      return imageIds.length ? openSeries(series[at]) : openFirstImageSeries(series, at + 1);
    });
  }
})();
