Console.WriteLine("Palm.Trainer");
