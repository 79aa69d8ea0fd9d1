/* The browser client, linked into the server so it needs no file path:
 * the minified build and its map (js/dist, made by `make js-dist`) and
 * the readable source. Each ends with a 0 byte not counted in its size.
 * server/asset.c serves them. */
	.section .rodata
	.global bg_js_min_start
	.global bg_js_min_end
	.global bg_js_map_start
	.global bg_js_map_end
	.global bg_js_src_start
	.global bg_js_src_end
bg_js_min_start:
	.incbin "js/dist/bagou.min.js"
bg_js_min_end:
	.byte 0
bg_js_map_start:
	.incbin "js/dist/bagou.min.js.map"
bg_js_map_end:
	.byte 0
bg_js_src_start:
	.incbin "js/bagou.js"
bg_js_src_end:
	.byte 0
	.section .note.GNU-stack,"",@progbits
