/* Stands in for libedgetpu.so.1 with no accelerator attached: exports the TFLite external
 * delegate entry points, records the options it was given, and reports "no device" (NULL),
 * as the real library does when no Edge TPU is plugged in. */
#include <stdio.h>
#include <stdlib.h>

void *tflite_plugin_create_delegate(char **keys, char **values, size_t n, void (*report)(const char *)) {
    const char *out = getenv("FAKE_EDGETPU_LOG");
    if (out) {
        FILE *f = fopen(out, "a");
        if (f) {
            for (size_t i = 0; i < n; i++) fprintf(f, "%s=%s\n", keys[i], values[i]);
            fclose(f);
        }
    }
    if (report) report("Failed to open device: no Edge TPU attached");
    return NULL;
}

void tflite_plugin_destroy_delegate(void *delegate) { (void)delegate; }
