/* COM1 (16550/8250 at port 0x3f8): polled output only. */
#ifndef GUEST_UART_H
#define GUEST_UART_H

void uart_init(void);
void uart_putc(char c);

#endif
