// The libraries the page needs, as browser globals, so the page's own script
// can stay a plain inline script that works from file:// (no module loading).
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import * as topojson from "topojson-client";
import land from "world-atlas/land-110m.json";
import countries from "world-atlas/countries-110m.json";

window.THREE = THREE;
window.OrbitControls = OrbitControls;
window.topojson = topojson;
window.WORLD_ATLAS = { land, countries };
