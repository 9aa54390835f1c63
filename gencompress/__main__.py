from gencompress.cli import main

main()
